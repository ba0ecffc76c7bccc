"""The contract every registered learner keeps, checked for each entry of `REGISTRY`.

New algorithms are covered by registering them: the parameter list is read from
`metalearn.algorithms.REGISTRY` when the tests are collected. A learner is built
by the registry's calling convention, `factory(model, *, inner_lr, inner_steps,
objective)`, on sinusoid regression, and scored by the task family's evaluator
(`metalearn.evaluation`, with an adaptation curve of learners built with each of
`EVAL_STEPS` inner steps); one that needs something else (another signature,
classification episodes) gets an entry in `SETUPS`.

The invariances (vmap == loop, jit == eager, padding changes nothing) are exact in
real arithmetic, so they are checked in float64 with tight tolerances: in float32,
rounding differences are amplified by ill-conditioned inner solvers (iMAML's CG)
and a loose tolerance would hide real bugs. Tracing and state types are checked in
float32, the library's default.
"""

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn import algorithms, core, evaluation
from metalearn import episodes as ep
from metalearn.data.sinusoid import Sinusoid
from metalearn.models import MLP, Conv4, Model, as_model
from metalearn.models.relation import RelationEmbedding, RelationModule

NAMES = sorted(algorithms.REGISTRY)
NUM_TASKS = 4
EVAL_STEPS = (0, 1, 10)
PAD = 3  # masked-out garbage rows appended to support and query

# The test's own jits need no fast code, only fast compiles (LLVM -O0; results are the same).
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _close(a, b, rtol=1e-9, atol=1e-10):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def _sinusoid(seed):
  """4 sinusoid tasks, 5 support and 5 query points, float32 numpy `[4, 5, 1]`."""
  return Sinusoid(shots=5, queries=5).sample(np.random.default_rng(seed), NUM_TASKS)


class Setup(NamedTuple):
  """How the contract builds and feeds one learner.

  Attributes:
    learner: the learner under test.
    sample: `seed -> episodes [NUM_TASKS, ...]`, float32 numpy, all rows real.
    metric: `(name, fn)` of a query metric that the evaluator reports.
    eval_steps: the inner-step counts the evaluator reports the metric at (`name@k`),
      or None for a learner without inner steps (reported as `name`).
    curve: `{k: learner with k inner steps}` for `eval_steps`, or the learner itself.
    evaluate: the task family's one-task evaluator of `curve`.
  """

  learner: core.MetaLearner
  sample: Callable[[int], ep.Episode]
  metric: tuple[str, Callable[[jax.Array, ep.Split], jax.Array]]
  eval_steps: tuple[int, ...] | None
  curve: Any
  evaluate: core.EvaluateFn


def _registry_convention(name):
  factory = algorithms.REGISTRY[name]
  kwargs = dict(inner_lr=0.01, objective="mse")
  learner = factory(MLP(hidden=(8,)), inner_steps=2, **kwargs)
  curve = evaluation.curve(factory, EVAL_STEPS, MLP(hidden=(8,)), **kwargs)
  return Setup(learner, _sinusoid, ("mse", ep.mse), EVAL_STEPS, curve, evaluation.regression(curve))


def _classification(seed, ways=3, shots=2, queries=2, dim=4):
  """`NUM_TASKS` tasks of `ways` Gaussian clusters in `dim` dimensions (labels permuted)."""
  rng = np.random.default_rng(seed)
  centers = 2.0 * rng.normal(size=(NUM_TASKS, ways, dim))

  def split(per_class):
    y = np.stack([rng.permutation(np.tile(np.arange(ways), per_class)) for _ in range(NUM_TASKS)])
    x = np.take_along_axis(centers, y[..., None], axis=1) + rng.normal(size=(*y.shape, dim))
    return ep.Split(x.astype(np.float32), y.astype(np.int32), np.ones(y.shape, bool))

  return ep.Episode(split(shots), split(queries))


def _metric_setup(name):
  def setup():
    learner = algorithms.REGISTRY[name](MLP(hidden=(8,), out=5), ways=3)
    metric = ("accuracy", ep.accuracy)
    return Setup(
      learner, _classification, metric, None, learner, evaluation.classification(learner)
    )

  return setup


def _relation_setup():
  scorer = as_model(MLP(hidden=(8,), out=1))
  # A relation module without batch statistics, so masked rows cannot move it.
  module = Model(scorer.init, lambda p, pairs: jax.nn.sigmoid(scorer.apply(p, pairs))[:, 0])
  learner = algorithms.relation(MLP(hidden=(8,), out=5), ways=3, relation_module=module)
  metric = ("accuracy", ep.accuracy)
  return Setup(learner, _classification, metric, None, learner, evaluation.classification(learner))


# name -> () -> Setup, for learners the registry's calling convention does not fit.
def _probabilistic_setup(name):
  """A learner whose predictor returns a `Predictive`: scored by its mean's MSE (and likelihood)."""

  def setup():
    factory = algorithms.REGISTRY[name]
    kwargs = dict(inner_lr=0.01, objective="mse")
    learner = factory(MLP(hidden=(8,)), inner_steps=2, **kwargs)
    curve = evaluation.curve(factory, EVAL_STEPS, MLP(hidden=(8,)), **kwargs)
    metric = ("mse", lambda pred, split: ep.mse(jnp.mean(pred.mean, axis=0)[:, None], split))
    evaluate = evaluation.probabilistic_regression(curve)
    return Setup(learner, _sinusoid, metric, EVAL_STEPS, curve, evaluate)

  return setup


SETUPS: dict[str, Callable[[], Setup]] = {
  "protonet": _metric_setup("protonet"),
  "matching": _metric_setup("matching"),
  "relation": _relation_setup,
  **{name: _probabilistic_setup(name) for name in algorithms.PROBABILISTIC},
}

# The real models, as the Omniglot binary builds them (narrowed to 4 channels, 16x16 images):
# Conv4 with a head under the gradient-based learners, Conv4's embedding under ProtoNets and
# Matching Networks, the paper's modules under Relation Networks.
IMAGE, CHANNELS, WAYS = 16, 4, 3
# Learners whose real model normalises with the batch's statistics: padded rows enter the
# mean and variance, so padding changes the outputs (the models' documented behaviour,
# not a defect of the learner): `test_padding_rows_change_nothing` is expected to fail.
BATCH_STATISTICS = (
  "Conv4 and the Relation Network's modules normalise with the statistics of every row of "
  "the batch, padded rows included"
)


def _images(seed, ways=WAYS, shots=2, queries=2):
  """`NUM_TASKS` tasks of `ways` classes of 16x16 images: a class is a noisy random pattern."""
  rng = np.random.default_rng(seed)
  patterns = rng.normal(size=(NUM_TASKS, ways, IMAGE, IMAGE, 1))

  def split(per_class):
    y = np.stack([rng.permutation(np.tile(np.arange(ways), per_class)) for _ in range(NUM_TASKS)])
    x = np.take_along_axis(patterns, y[..., None, None, None], axis=1)
    x = x + 0.5 * rng.normal(size=x.shape)
    return ep.Split(x.astype(np.float32), y.astype(np.int32), np.ones(y.shape, bool))

  return ep.Episode(split(shots), split(queries))


def _real_model_setup(name):
  def setup():
    factory = algorithms.REGISTRY[name]
    metric = ("accuracy", ep.accuracy)
    if name == "relation":
      learner = factory(
        RelationEmbedding(channels=CHANNELS),
        ways=WAYS,
        relation_module=RelationModule(channels=CHANNELS, hidden=4),
      )
      return Setup(learner, _images, metric, None, learner, evaluation.classification(learner))
    if "ways" in inspect.signature(factory).parameters:
      learner = factory(Conv4(ways=None, channels=CHANNELS), ways=WAYS)
      return Setup(learner, _images, metric, None, learner, evaluation.classification(learner))
    kwargs = dict(inner_lr=0.1, objective="cross_entropy")
    model = Conv4(ways=WAYS, channels=CHANNELS)
    learner = factory(model, inner_steps=2, **kwargs)
    curve = evaluation.curve(factory, EVAL_STEPS, model, **kwargs)
    # The query loss, not the accuracy: on 6 query images an adapted model can keep the same
    # count right while its loss falls (MT-Net's masked step does so on one of these tasks).
    metric = ("loss", ep.cross_entropy)
    return Setup(learner, _images, metric, EVAL_STEPS, curve, evaluation.classification(curve))

  return setup


# (Probabilistic learners model a Gaussian likelihood of scalar outputs: regression only.)
REAL = {
  f"{name}[real model]": _real_model_setup(name)
  for name in sorted(algorithms.REGISTRY)
  if name not in algorithms.PROBABILISTIC
}


def _adam_inner_setup():
  """MAML whose inner optimizer is Adam: optimizer state carried through the inner scan."""
  kwargs = dict(inner_optimizer=optax.adam(0.01), objective="mse")
  learner = algorithms.maml(MLP(hidden=(8,)), inner_steps=2, **kwargs)
  curve = evaluation.curve(algorithms.maml, EVAL_STEPS, MLP(hidden=(8,)), **kwargs)
  return Setup(learner, _sinusoid, ("mse", ep.mse), EVAL_STEPS, curve, evaluation.regression(curve))


SETUPS["maml[adam inner]"] = _adam_inner_setup
NAMES = [*NAMES, "maml[adam inner]", *sorted(REAL)]


def _setup(name):
  if name in REAL:
    return REAL[name]()
  return SETUPS[name]() if name in SETUPS else _registry_convention(name)


def _f64(tree):
  return jax.tree_util.tree_map(
    lambda a: a.astype(np.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
  )


def _pad_with_garbage(batch, rng):
  """Appends PAD rows with large random x and y, masked out, to both splits of every task."""

  def garbage(a):
    shape = (a.shape[0], PAD, *a.shape[2:])
    if np.issubdtype(a.dtype, np.integer):  # labels: random but in range
      return rng.integers(0, a.max() + 1, size=shape).astype(a.dtype)
    return (10.0 * rng.normal(size=shape)).astype(a.dtype)

  def pad(split):
    return ep.Split(
      np.concatenate([split.x, garbage(split.x)], axis=1),
      np.concatenate([split.y, garbage(split.y)], axis=1),
      np.concatenate([split.mask, np.zeros((split.mask.shape[0], PAD), bool)], axis=1),
    )

  return ep.Episode(pad(batch.support), pad(batch.query))


def _per_task_outputs(learner, evaluate=None):
  """One task -> meta-loss, its metrics, the meta-gradient and (given `evaluate`) its metrics."""

  def outputs(theta, episode, key):
    if learner.meta_grad is None:
      (loss, metrics), grad = jax.value_and_grad(learner.meta_loss, has_aux=True)(
        theta, episode, key
      )
      grad_metrics = {}
    else:
      loss, metrics = learner.meta_loss(theta, episode, key)
      grad, grad_metrics = learner.meta_grad(theta, episode, key)
    out = {"loss": loss, "metrics": metrics, "grad": grad, "grad_metrics": grad_metrics}
    if evaluate is not None:
      out["eval"] = evaluate(theta, episode, key)
    return out

  return outputs


class Case(NamedTuple):
  name: str
  setup: Setup
  learner: core.MetaLearner
  theta: Any  # float64
  batch: ep.Episode  # float64, [T, ...]
  keys: jax.Array
  one: Any  # jit(outputs), one task
  batched: Any  # jit(vmap(outputs))
  want: Any  # batched(theta, batch, keys)


@pytest.fixture(scope="module", params=NAMES)
def case(request):
  name = request.param
  with jax.enable_x64(True):
    setup = _setup(name)
    learner = setup.learner
    batch = _f64(setup.sample(0))
    theta = _f64(learner.init(jax.random.key(0), ep.task(batch, 0)))
    keys = jax.random.split(jax.random.key(1), NUM_TASKS)
    outputs = _per_task_outputs(learner, setup.evaluate)
    one = _jit(outputs)
    batched = _jit(jax.vmap(outputs, in_axes=(None, 0, 0)))
    want = jax.device_get(batched(theta, batch, keys))
  return Case(name, setup, learner, theta, batch, keys, one, batched, want)


def test_vmap_over_tasks_equals_python_loop(case, x64):
  loop = [case.one(case.theta, ep.task(case.batch, i), case.keys[i]) for i in range(NUM_TASKS)]
  stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *loop)
  assert np.ptp(case.want["loss"]) > 0  # tasks differ, so a mix-up would show
  _close(case.want, stacked)


def test_jit_equals_eager(case, x64):
  # Op by op, with every `jit` and `scan` inside run as Python. The evaluator (a 10-step curve)
  # is left out to keep this cheap; its jit and vmap are checked in the other tests.
  episode, key = ep.task(case.batch, 1), case.keys[1]
  with jax.disable_jit():
    eager = _per_task_outputs(case.learner)(case.theta, episode, key)
  jitted = case.one(case.theta, episode, key)
  del jitted["eval"]
  _close(eager, jitted)


def test_padding_rows_change_nothing(case, x64, request):
  if case.name in REAL:
    request.applymarker(pytest.mark.xfail(strict=True, reason=BATCH_STATISTICS))
  padded = _pad_with_garbage(case.batch, np.random.default_rng(5))
  assert padded.support.mask.shape[1] == case.batch.support.mask.shape[1] + PAD
  _close(case.batched(case.theta, padded, case.keys), case.want)


def test_meta_gradient_finite_and_shaped_like_theta(case):
  grad = case.want["grad"]
  assert jax.tree_util.tree_structure(grad) == jax.tree_util.tree_structure(case.theta)
  for g, t in zip(
    jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(case.theta), strict=True
  ):
    assert g.shape == (NUM_TASKS, *t.shape)
    assert g.dtype == t.dtype
    assert np.all(np.isfinite(g))
  # Every group of meta-parameters gets a learning signal.
  for group, g in grad.items():
    norm = sum(float(np.sum(np.square(x))) for x in jax.tree_util.tree_leaves(g))
    assert norm > 0, f"{case.name}: zero meta-gradient for theta[{group!r}]"


def test_interface_shapes_and_keys(case):
  assert case.learner.name
  assert isinstance(case.theta, dict) and case.theta
  want = case.want
  assert want["loss"].shape == (NUM_TASKS,) and np.all(np.isfinite(want["loss"]))
  for name, v in {**want["metrics"], **want["grad_metrics"]}.items():
    assert v.shape == (NUM_TASKS,), name
  metric, steps = case.setup.metric[0], case.setup.eval_steps
  assert set(_eval_names(metric, steps)) <= set(want["eval"])
  for name, v in want["eval"].items():
    assert re.fullmatch(r"\w+@\d+" if steps is not None else r"\w+", name), name
    assert v.shape == (NUM_TASKS,) and np.all(np.isfinite(v)), name


def _eval_names(metric, steps):
  """`{name: num_steps}` of the entries `evaluate` reports for `metric`."""
  if steps is None:
    return {metric: None}
  return {f"{metric}@{k}": k for k in steps}


def test_evaluate_reports_query_metric_after_adapt(case, x64):
  """The evaluator's `name@k` is the query metric of the predictor adapted with k inner steps."""
  i = 2
  episode, key = ep.task(case.batch, i), case.keys[i]
  metric, fn = case.setup.metric
  got = {}
  for name, k in _eval_names(metric, case.setup.eval_steps).items():
    learner = case.setup.curve if k is None else case.setup.curve[k]
    # Op by op (cheaper than compiling three inner loops), except k = 0: `disable_jit` cannot
    # run a zero-length `scan`.
    with jax.disable_jit(k != 0):
      predictions = learner.adapt(case.theta, episode.support, key)(episode.query.x)
    rows = predictions.mean.shape[1:2] if hasattr(predictions, "scale") else predictions.shape[:1]
    assert rows == episode.query.mask.shape  # a `Predictive` is [K samples, rows]
    got[name] = fn(predictions, episode.query)
  _close(got, {name: case.want["eval"][name][i] for name in got})
  if case.setup.eval_steps is not None:
    # Adaptation does something: the metric after the most steps is not the one after none.
    first, last = min(case.setup.eval_steps), max(case.setup.eval_steps)
    assert not np.isclose(got[f"{metric}@{first}"], got[f"{metric}@{last}"])


@pytest.mark.parametrize("name", NAMES)
def test_meta_step_traces_once(name):
  setup = _setup(name)
  learner = setup.learner
  optimizer = optax.adam(1e-3)
  step = core.make_meta_step(learner, optimizer)
  traces = []

  def counted(state, episodes):
    traces.append(1)
    return step(state, episodes)

  jitted = _jit(counted)
  state = core.init_state(learner, optimizer, jax.random.key(0), ep.task(setup.sample(0), 0))
  fresh_types = jax.tree_util.tree_map(jax.typeof, state)
  losses = []
  for seed in (0, 1, 2):
    state, metrics = jitted(state, setup.sample(seed))
    losses.append(float(metrics["loss"]))
    assert float(metrics["nonfinite"]) == 0.0
  assert len(traces) == 1
  assert int(state.step) == 3
  assert len(set(losses)) == 3  # new data (and the updated state) were really used
  # The state that comes out has the types (shape, dtype, weak type) of the one that went in.
  assert jax.tree_util.tree_map(jax.typeof, state) == fresh_types
