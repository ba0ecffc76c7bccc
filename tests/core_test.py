"""Task-batching strategies, summaries of per-task metrics, and the non-finite guard."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn import algorithms, core, evaluation
from metalearn import episodes as ep
from metalearn.models import Model

STRATEGIES = ["vmap", "map", "unroll", "chunk:1", "chunk:2", "chunk:4", "unroll:2", "unroll:4"]

# Tests need fast compiles, not fast code (LLVM -O0; results are the same).
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# A tiny two-layer tanh network without flax: cheap to compile, second order is non-trivial.
TINY_NET = Model(
  init=lambda key, x: {
    "w1": jax.random.normal(key, (x.shape[-1], 4)),
    "w2": jax.random.normal(jax.random.fold_in(key, 1), (4, 1)),
  },
  apply=lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"],
)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


@pytest.fixture
def learner():
  return algorithms.maml(TINY_NET, inner_lr=0.05, inner_steps=2)


@pytest.fixture
def theta(learner, sinusoid_batch):
  return learner.init(jax.random.key(0), ep.task(sinusoid_batch, 0))


def _one_task_fn(theta, episode, key):
  """A cheap one-task function whose outputs depend on theta, the episode and the key."""
  pred = episode.support.x @ theta["w"]
  loss = ep.mse(pred, episode.support) + jax.random.uniform(key)
  return loss, {"pred": pred, "first_x": episode.query.x[0, 0]}


def test_strategies_give_equal_outputs(sinusoid_batch):
  theta = {"w": jnp.full((1, 1), 0.5)}
  keys = jax.random.split(jax.random.key(1), 4)
  loop = [_one_task_fn(theta, ep.task(sinusoid_batch, i), keys[i]) for i in range(4)]
  want = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *loop)
  assert want[0].shape == (4,) and want[1]["pred"].shape == (4, 5, 1)
  np.testing.assert_array_equal(want[1]["first_x"], sinusoid_batch.query.x[:, 0, 0])
  _assert_trees_close(core.batch_over_tasks(_one_task_fn)(theta, sinusoid_batch, keys), want)
  for strategy in STRATEGIES:
    batched = _jit(core.batch_over_tasks(_one_task_fn, strategy))
    _assert_trees_close(batched(theta, sinusoid_batch, keys), want)


def test_strategies_give_equal_meta_steps(learner, sinusoid_batch):
  optimizer = optax.adam(1e-2)
  state = core.init_state(learner, optimizer, jax.random.key(0), ep.task(sinusoid_batch, 0))
  strategies = ("vmap", "map", "unroll", "chunk:2", "unroll:2")
  results = {
    s: _jit(core.make_meta_step(learner, optimizer, strategy=s))(state, sinusoid_batch)
    for s in strategies
  }
  for s in strategies:
    new_state, metrics = results[s]
    assert int(new_state.step) == 1 and float(metrics["nonfinite"]) == 0.0
    np.testing.assert_array_equal(
      jax.random.key_data(new_state.rng), jax.random.key_data(state.rng)
    )
    _assert_trees_close(
      (new_state.theta, new_state.opt_state, metrics),
      (results["vmap"][0].theta, results["vmap"][0].opt_state, results["vmap"][1]),
    )


@pytest.mark.parametrize("strategy", ["map", "chunk:2", "unroll:2"])
def test_looping_strategies_take_each_tasks_gradient_inside_the_loop(
  learner, sinusoid_batch, strategy
):
  # Differentiating a loop adds a second, transposed loop that reads residuals
  # stacked over all tasks; a loop of per-task gradients stays one loop.
  optimizer = optax.sgd(0.1)
  state = core.init_state(learner, optimizer, jax.random.key(0), ep.task(sinusoid_batch, 0))
  for meta_grad in (None, lambda theta, e, k: (theta, {"loss": jnp.zeros([])})):
    fit = learner._replace(meta_grad=meta_grad)
    jaxpr = jax.make_jaxpr(core.make_meta_step(fit, optimizer, strategy=strategy))(
      state, sinusoid_batch
    )
    loops = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("scan", "while")]
    assert len(loops) == 1, [e.primitive.name for e in jaxpr.jaxpr.eqns]


@pytest.mark.parametrize(
  "strategy", ["pmap", "chunk:0", "chunk:", "chunk:x", "chunk:-2", "Vmap", "unroll:0", "map:2"]
)
def test_bad_strategy_errors(learner, strategy):
  with pytest.raises(ValueError, match="strategy"):
    core.batch_over_tasks(learner.meta_loss, strategy)
  with pytest.raises(ValueError, match="strategy"):
    core.make_meta_step(learner, optax.sgd(0.1), strategy=strategy)


def test_eval_step_bad_strategy_errors(learner, theta, sinusoid_batch):
  with pytest.raises(ValueError, match="strategy"):
    core.make_eval_step(learner, strategy="chunk:0")(theta, sinusoid_batch, jax.random.key(0))


def test_chunk_needs_divisible_task_count(learner, theta, sinusoid_batch):
  keys = jax.random.split(jax.random.key(1), 4)
  with pytest.raises(ValueError, match="divisible by 3"):
    core.batch_over_tasks(learner.meta_loss, "chunk:3")(theta, sinusoid_batch, keys)


def test_summarize_known_values():
  vals = np.array([1.0, 2.0, 3.0, np.nan, np.inf, -np.inf])
  out = core.summarize({"a": vals, "b": np.array([5.0]), "c": np.array([np.nan, np.inf])})
  assert out["a"]["n"] == 3 and out["a"]["nonfinite"] == 3
  assert out["a"]["mean"] == pytest.approx(2.0)
  assert out["a"]["ci95"] == pytest.approx(1.96 * 1.0 / math.sqrt(3))  # sample std of 1,2,3 is 1
  assert out["b"] == {"mean": 5.0, "ci95": out["b"]["ci95"], "n": 1, "nonfinite": 0}
  assert math.isnan(out["b"]["ci95"])
  assert out["c"]["n"] == 0 and out["c"]["nonfinite"] == 2 and math.isnan(out["c"]["mean"])


def test_summarize_accepts_multi_dim_and_ints():
  out = core.summarize({"a": np.array([[2, 4], [6, 8]])})
  assert out["a"]["n"] == 4 and out["a"]["mean"] == pytest.approx(5.0)
  assert out["a"]["ci95"] == pytest.approx(1.96 * np.std([2, 4, 6, 8], ddof=1) / 2)


def test_evaluate_summarises_eval_step(learner, theta, sinusoid_batch):
  curve = evaluation.curve(algorithms.maml, (0, 2), TINY_NET, inner_lr=0.05)
  eval_step = _jit(core.make_eval_step(evaluation.regression(curve)))
  out = core.evaluate(eval_step, theta, [sinusoid_batch, sinusoid_batch], jax.random.key(3))
  assert set(out) == {"mse@0", "mse@2"}
  per_task = eval_step(theta, sinusoid_batch, jax.random.key(0))
  assert out["mse@0"]["n"] == 8 and out["mse@0"]["nonfinite"] == 0
  np.testing.assert_allclose(out["mse@0"]["mean"], np.mean(per_task["mse@0"]), rtol=1e-5)
  with pytest.raises(ValueError, match="at least one batch"):
    core.evaluate(eval_step, theta, [], jax.random.key(3))


@pytest.mark.parametrize("name", ["maml", "reptile"])
def test_meta_step_skips_nonfinite_update(name, sinusoid_batch):
  learner = algorithms.get(name)(TINY_NET, inner_lr=0.05, inner_steps=1)
  optimizer = optax.adam(1e-2)
  state = core.init_state(learner, optimizer, jax.random.key(0), ep.task(sinusoid_batch, 0))
  step = _jit(core.make_meta_step(learner, optimizer))

  # A finite batch: one real update.
  good, metrics = step(state, sinusoid_batch)
  assert float(metrics["nonfinite"]) == 0.0 and np.isfinite(metrics["loss"])
  assert int(good.step) == 1
  moved = jax.tree_util.tree_leaves(
    jax.tree_util.tree_map(lambda a, b: np.any(a != b), good.theta, state.theta)
  )
  assert any(moved)

  # A real (unmasked) query target that is not finite: the update is skipped.
  for task, bad in ((1, np.nan), (3, np.inf)):
    y = np.array(sinusoid_batch.query.y)
    y[task, 2, 0] = bad
    poisoned = sinusoid_batch._replace(query=sinusoid_batch.query._replace(y=y))
    after, metrics = step(good, poisoned)
    assert float(metrics["nonfinite"]) == 1.0
    assert not np.isfinite(metrics["loss"])
    assert int(after.step) == 2
    before = jax.tree_util.tree_leaves((good.theta, good.opt_state))
    for a, b in zip(jax.tree_util.tree_leaves((after.theta, after.opt_state)), before, strict=True):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jax.random.key_data(after.rng), jax.random.key_data(good.rng))


@pytest.mark.parametrize("bad, nonfinite", [(np.inf, 1.0), (np.nan, 1.0), (1e30, 1.0), (1e3, 0.0)])
def test_meta_step_guard_reads_the_gradient_not_only_the_loss(bad, nonfinite, sinusoid_batch):
  # A finite loss with a gradient entry `bad`: an infinite or NaN entry, or
  # finite entries whose global norm overflows float32, skip the update.
  base = algorithms.maml(TINY_NET, inner_lr=0.05, inner_steps=1)

  def meta_grad(theta, episode, key):
    leaves, tree = jax.tree_util.tree_flatten(jax.tree_util.tree_map(jnp.zeros_like, theta))
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(bad)
    return jax.tree_util.tree_unflatten(tree, leaves), {"loss": jnp.float32(0.5)}

  learner = base._replace(meta_grad=meta_grad)
  optimizer = optax.sgd(1e-6)
  state = core.init_state(learner, optimizer, jax.random.key(0), ep.task(sinusoid_batch, 0))
  after, metrics = _jit(core.make_meta_step(learner, optimizer))(state, sinusoid_batch)
  assert float(metrics["nonfinite"]) == nonfinite and float(metrics["loss"]) == 0.5
  first = lambda theta: np.asarray(jax.tree_util.tree_leaves(theta)[0])
  moved = not np.array_equal(first(after.theta), first(state.theta))
  assert moved == (nonfinite == 0.0)


def test_repeat_step_equals_steps_in_order(learner, sinusoid_batch):
  optimizer = optax.adam(1e-2)
  state = core.init_state(learner, optimizer, jax.random.key(0), ep.task(sinusoid_batch, 0))
  step = core.make_meta_step(learner, optimizer, strategy="vmap")
  rng = np.random.default_rng(5)
  batches = []
  for _ in range(3):  # three different batches of the same shapes
    noise = rng.normal(size=sinusoid_batch.query.y.shape).astype(np.float32)
    query = sinusoid_batch.query._replace(y=sinusoid_batch.query.y + noise)
    batches.append(sinusoid_batch._replace(query=query))
  expected, per_step = state, []
  for b in batches:
    expected, m = _jit(step)(expected, b)
    per_step.append(m)
  got, metrics = _jit(core.repeat_step(step))(state, tuple(batches))
  _assert_trees_close(
    (got.step, got.theta, got.opt_state), (expected.step, expected.theta, expected.opt_state)
  )
  assert int(got.step) == 3
  for name, values in metrics.items():
    assert values.shape == (3,), name
    np.testing.assert_allclose(values, [float(m[name]) for m in per_step], rtol=1e-5, atol=1e-7)
  assert len(set(np.asarray(metrics["loss"]).tolist())) == 3  # the steps saw different batches
  with pytest.raises(ValueError, match="at least one batch"):
    core.repeat_step(step)(state, ())


def test_meta_step_rejects_unbatched_episode(learner, sinusoid_batch):
  optimizer = optax.sgd(0.1)
  one = ep.task(sinusoid_batch, 0)
  state = core.init_state(learner, optimizer, jax.random.key(0), one)
  with pytest.raises(ValueError, match=r"episode\.support\.mask"):
    core.make_meta_step(learner, optimizer)(state, one)


def test_auto_strategy_vmaps_dense_networks_and_maps_convolutions_on_cpu(
  learner, theta, sinusoid_batch
):
  keys = jax.random.split(jax.random.key(1), 4)
  assert jax.default_backend() == "cpu"
  assert core.auto_strategy(learner.meta_loss, theta, sinusoid_batch, keys) == "vmap"

  from metalearn.algorithms.maml import maml
  from metalearn.models import Conv4

  conv = maml(Conv4(ways=2, channels=2, blocks=1), inner_lr=0.1, objective="cross_entropy")
  x = np.zeros((4, 2, 4, 4, 1), np.float32)
  y = np.zeros((4, 2), np.int32)
  batch = ep.Episode(
    ep.make_split(x, y, np.ones((4, 2), bool)), ep.make_split(x, y, np.ones((4, 2), bool))
  )
  conv_theta = conv.init(jax.random.key(0), ep.task(batch, 0))
  assert core.auto_strategy(conv.meta_loss, conv_theta, batch, keys) == "map"
  # "auto" gives the same numbers as the strategy it picks.
  got = core.batch_over_tasks(conv.meta_loss, "auto")(conv_theta, batch, keys)[0]
  want = core.batch_over_tasks(conv.meta_loss, "vmap")(conv_theta, batch, keys)[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
