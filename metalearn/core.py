"""The one interface every learner implements, and the one place that batches tasks.

A `MetaLearner` acts on ONE task. `make_meta_step` is the only code in the
library that maps a learner over a batch of tasks; how it does so (`vmap`,
`lax.map`, chunked `vmap`, or tasks unrolled inside one `jit`) is a strategy
chosen per backend and model by measurement, never by the algorithm.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metalearn import _jaxpr
from metalearn.types import MetaParams, Metrics, PRNGKey, TaskParams

Task = Any  # one task: any PyTree (a supervised `Episode`, environment parameters, a dict)
InitFn = Callable[[PRNGKey, Task], MetaParams]
AdaptFn = Callable[[MetaParams, Any, PRNGKey], TaskParams]  # (theta, task data, key)
MetaLossFn = Callable[[MetaParams, Task, PRNGKey], tuple[jax.Array, Metrics]]
MetaGradFn = Callable[[MetaParams, Task, PRNGKey], tuple[MetaParams, Metrics]]
EvaluateFn = Callable[[MetaParams, Task, PRNGKey], Metrics]  # one task -> scalar metrics


class MetaLearner(NamedTuple):
  """A meta-learning algorithm as three pure functions of ONE task.

  A task is any PyTree: a supervised `Episode` (support and query splits), an
  environment's parameters, a context and target set. Nothing here batches
  over tasks (`make_meta_step` does).

  Attributes:
    init: `(key, task) -> theta`, everything the outer loop learns.
    adapt: `(theta, task_data, key) -> task_params`: the inner loop or
      inference on what a task gives to adapt on (a supervised task's support
      split). `task_params` is whatever the method needs; the supervised
      learners return a `Predictor`, a callable PyTree `x [n, ...] -> [n, d]`
      (adapted weights, prototypes), which the task family's evaluator scores
      (`metalearn.evaluation`). Randomness (posterior samples) comes from `key`.
    meta_loss: `(theta, task, key) -> (loss, metrics)`; `jax.grad` of it is
      the meta-gradient unless `meta_grad` is given.
    meta_grad: optional `(theta, task, key) -> (grad_like_theta, metrics)`
      for estimators that are not the gradient of `meta_loss` (Reptile, ES).
    name: a short name for logs.
  """

  init: InitFn
  adapt: AdaptFn
  meta_loss: MetaLossFn
  meta_grad: MetaGradFn | None = None
  name: str = ""


def predictor(fn: Callable[..., jax.Array], *params: Any) -> jax.tree_util.Partial:
  """`fn` with its leading arguments `params` bound, as a PyTree (`jax.tree_util.Partial`).

  The bound arrays are the PyTree's leaves and `fn` is static, so a predictor
  can be returned from `jit`, batched by `vmap` and stored like any weights;
  calling it, `predictor(fn, phi)(x)`, is `fn(phi, x)`.
  """
  return jax.tree_util.Partial(fn, *params)


def num_tasks(batch: Any) -> int:
  """Size of the leading task axis of a batch of tasks, any PyTree of arrays `[T, ...]`.

  Raises:
    ValueError: when the batch has no arrays, or its leaves disagree on the
      leading axis (the message names the first leaf that differs).
  """
  leaves = jax.tree_util.tree_leaves_with_path(batch)
  if not leaves:
    raise ValueError("a batch of tasks must hold at least one array with a leading task axis")
  sizes = [(jax.tree_util.keystr(path), np.shape(x)) for path, x in leaves]
  first_name, first = sizes[0]
  if not first:
    raise ValueError(f"batch{first_name} is a scalar; a batch of tasks has a leading task axis")
  for name, shape in sizes[1:]:
    if not shape or shape[0] != first[0]:
      raise ValueError(
        f"the batch's leaves disagree on the number of tasks: batch{first_name} has shape "
        f"{first}, batch{name} has shape {shape}"
      )
  return int(first[0])


def task(batch: Any, i: int) -> Any:
  """Task `i` of a batch of tasks (any PyTree with a leading task axis)."""
  return jax.tree_util.tree_map(lambda a: a[i], batch)


class MetaTrainState(NamedTuple):
  """Everything a training run carries from one meta-step to the next."""

  step: jax.Array  # [] int32, meta-steps taken (skipped ones included)
  theta: MetaParams
  opt_state: optax.OptState
  rng: jax.Array  # base PRNG key (as given to init_state); step keys are fold_in(rng, step)


STRATEGIES = ("auto", "vmap", "map", "unroll", "chunk:N", "unroll:N")


def check_strategy(strategy: str, *, field: str = "strategy") -> None:
  """Raises ValueError naming `field` unless `strategy` is one of `STRATEGIES`."""
  if isinstance(strategy, str) and strategy in ("auto", "vmap", "map", "unroll"):
    return
  kind, _, n = strategy.partition(":") if isinstance(strategy, str) else ("", "", "")
  if kind in ("chunk", "unroll") and n.isdigit() and int(n) > 0:
    return
  raise ValueError(f"{field} must be one of {', '.join(STRATEGIES)} (N > 0), got {strategy!r}")


def auto_strategy(fn: Callable[..., Any], theta: Any, tasks: Task, keys: jax.Array) -> str:
  """The strategy `auto` picks for `fn` over this batch, by backend and by what `fn` computes.

  On GPU and TPU: `vmap`. On a CPU: `vmap`, unless one task's computation
  contains a convolution, which XLA:CPU runs very slowly as the grouped
  convolution `vmap` makes of it; then `map`, one task at a time, which for
  Conv4 MAML on a CPU is faster than unrolling the tasks into one program and
  compiles in seconds instead of minutes (the meta-step then takes each task's
  gradient inside the loop). Measured in docs/results.md ("metalearn against
  PyTorch").

  Args:
    fn: `(theta, episode, key) -> outputs` for one task.
    theta: meta-parameters (arrays or tracers; only shapes are used).
    tasks: the batch `[T, ...]`.
    keys: `[T]` keys.
  """
  if jax.default_backend() != "cpu":
    return "vmap"
  one_task = (theta, task(tasks, 0), keys[0])
  if not _jaxpr.uses_primitive(fn, one_task, ("conv_general_dilated",)):
    return "vmap"
  return "map"


def _unrolled(fn, theta, tasks, keys):
  outs = [fn(theta, task(tasks, i), keys[i]) for i in range(keys.shape[0])]
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)


def batch_over_tasks(fn: Callable[..., Any], strategy: str = "auto") -> Callable[..., Any]:
  """Maps a one-task function over the task axis: the library's only such place.

  Args:
    fn: `(theta, episode, key) -> outputs` for one task.
    strategy: `auto` (the default; chosen by `auto_strategy` from the backend
      and the computation: `vmap`, except convolutions on a CPU: `map`),
      `vmap` (one batched program), `map` (`lax.map`, one task at a time),
      `unroll` (a Python loop inside the trace: T copies of the program, at a
      compile time that grows with T), `unroll:N` (N tasks unrolled, `lax.map`
      over the T / N groups) or `chunk:N` (`vmap` over N tasks at a time,
      `lax.map` over the chunks).

  Returns:
    `(theta, tasks [T, ...], keys [T, 2]) -> outputs stacked on a leading T axis`.
  """
  check_strategy(strategy)

  def batched(theta, tasks, keys):
    chosen = auto_strategy(fn, theta, tasks, keys) if strategy == "auto" else strategy
    return _batched(fn, chosen, theta, tasks, keys)

  return batched


def _batched(fn, strategy, theta, tasks, keys):
  """Applies `fn` over the task axis with a resolved (non-`auto`) strategy."""
  if strategy == "vmap":
    return jax.vmap(fn, in_axes=(None, 0, 0))(theta, tasks, keys)
  if strategy == "map":
    return jax.lax.map(lambda a: fn(theta, *a), (tasks, keys))
  if strategy == "unroll":
    return _unrolled(fn, theta, tasks, keys)
  t = keys.shape[0]
  kind, _, n = strategy.partition(":")
  n = int(n)
  if t % n:
    raise ValueError(f"strategy {strategy!r} needs a task count divisible by {n}, got {t}")
  group = (
    jax.vmap(fn, in_axes=(None, 0, 0)) if kind == "chunk" else functools.partial(_unrolled, fn)
  )
  chunked = jax.tree_util.tree_map(lambda a: a.reshape(t // n, n, *a.shape[1:]), (tasks, keys))
  out = jax.lax.map(lambda a: group(theta, *a), chunked)
  return jax.tree_util.tree_map(lambda a: a.reshape(t, *a.shape[2:]), out)


def init_state(
  learner: MetaLearner, optimizer: optax.GradientTransformation, key: PRNGKey, episode: Task
) -> MetaTrainState:
  """Initialises theta from one (unbatched) example episode, and the optimizer."""
  init_key, rng = jax.random.split(key)
  theta = learner.init(init_key, episode)
  return MetaTrainState(jnp.zeros([], jnp.int32), theta, optimizer.init(theta), rng)


def make_meta_step(
  learner: MetaLearner, optimizer: optax.GradientTransformation, *, strategy: str = "auto"
) -> Callable[[MetaTrainState, Task], tuple[MetaTrainState, Metrics]]:
  """Builds the meta-step: mean meta-loss over a batch of tasks, its gradient, an update.

  The update is applied only when the loss and the gradient's global norm are
  finite (so every gradient entry is; a norm beyond float32's range, above
  about 1.8e19, counts as non-finite too); otherwise theta and the optimizer
  state are kept and `metrics["nonfinite"]` is 1, so a caller can stop or
  count (see training). One test on the norm, which the metrics need anyway,
  instead of one per parameter array: on small models the step is bound by
  the number of kernels, not by arithmetic.

  Args:
    learner: the algorithm.
    optimizer: the outer (meta) optimizer.
    strategy: how to batch tasks (see `batch_over_tasks`).

  Returns:
    `step(state, tasks [T, ...]) -> (state, metrics)`, pure, ready for `jax.jit`.
  """
  check_strategy(strategy)

  def task_grad(theta, episode, key):
    if learner.meta_grad is not None:
      return learner.meta_grad(theta, episode, key)
    (loss, metrics), grads = jax.value_and_grad(learner.meta_loss, has_aux=True)(
      theta, episode, key
    )
    return grads, {**metrics, "loss": loss}

  def step(state: MetaTrainState, tasks: Task) -> tuple[MetaTrainState, Metrics]:
    keys = jax.random.split(jax.random.fold_in(state.rng, state.step), num_tasks(tasks))
    chosen = strategy
    if strategy == "auto":
      probe = learner.meta_grad or learner.meta_loss
      chosen = auto_strategy(probe, state.theta, tasks, keys)
    if learner.meta_grad is None and chosen in ("vmap", "unroll"):

      def mean_loss(theta):
        losses, metrics = batch_over_tasks(learner.meta_loss, chosen)(theta, tasks, keys)
        return jnp.mean(losses), jax.tree_util.tree_map(jnp.mean, metrics)

      (loss, metrics), grads = jax.value_and_grad(mean_loss, has_aux=True)(state.theta)
    else:
      # Strategies that loop over tasks (`map`, `unroll:N`, `chunk:N`) take each
      # task's gradient inside the loop and average them. Differentiating the
      # loop instead would keep every iteration's residuals (for Conv4 MAML,
      # [T, 75, 28, 28, 64] activation stacks written one task at a time) and
      # read them back in a second, transposed loop.
      grads, metrics = batch_over_tasks(task_grad, chosen)(state.theta, tasks, keys)
      grads, metrics = jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), (grads, metrics))
      loss = metrics["loss"]
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.theta)
    theta = optax.apply_updates(state.theta, updates)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
    metrics = {
      **metrics,
      "loss": loss,
      "grad_norm": grad_norm,
      "nonfinite": 1.0 - finite.astype(jnp.float32),
    }
    new_state = MetaTrainState(
      state.step + 1, keep(theta, state.theta), keep(opt_state, state.opt_state), state.rng
    )
    return new_state, metrics

  return step


def repeat_step(
  step: Callable[[MetaTrainState, Task], tuple[MetaTrainState, Metrics]],
) -> Callable[[MetaTrainState, Sequence[Task]], tuple[MetaTrainState, Metrics]]:
  """K meta-steps in one call: `(state, (episodes_1, ..., episodes_K)) -> (state, metrics [K])`.

  The K batches (each `[T, ...]`, the same shapes) are stacked and the step is
  run by `lax.scan` over them, so one compiled program takes K steps. The
  result equals K calls of `step` in order; what it saves is the per-call
  overhead (dispatch, argument handling, the host waiting for the device),
  which dominates when a step takes well under a millisecond (e.g. sinusoid
  MAML on a CPU). Compile time is that of one step.

  Args:
    step: a meta-step, e.g. `make_meta_step(...)`.

  Returns:
    A pure function, ready for `jax.jit`; every metric gains a leading `[K]`
    axis, entry k being that of the k-th step.
  """

  def steps(state: MetaTrainState, batches: Sequence[Task]):
    if not batches:
      raise ValueError("repeat_step needs at least one batch of tasks")
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *batches)
    return jax.lax.scan(step, state, stacked)

  return steps


def make_eval_step(evaluate: EvaluateFn, *, strategy: str = "auto") -> Callable[..., Metrics]:
  """`(theta, tasks [T, ...], key) -> metrics [T]`: a one-task evaluator over a batch.

  Args:
    evaluate: `(theta, task, key) -> scalar metrics` for ONE task, e.g. a task
      family's evaluator from `metalearn.evaluation`.
    strategy: how to batch tasks (see `batch_over_tasks`).
  """
  check_strategy(strategy)

  def eval_step(theta, tasks, key):
    keys = jax.random.split(key, num_tasks(tasks))
    return batch_over_tasks(evaluate, strategy)(theta, tasks, keys)

  return eval_step


def summarize(values: dict[str, np.ndarray]) -> dict[str, dict[str, float | int]]:
  """Mean and 95% confidence interval of per-task values, counting non-finite ones.

  Non-finite values are left out of the mean and counted in `nonfinite`; they
  are never averaged in silently.

  Args:
    values: metric name -> `[N]` per-task values.

  Returns:
    name -> `{"mean", "ci95", "n", "nonfinite"}` where `n` counts the finite
    values and `ci95 = 1.96 * std / sqrt(n)` (sample std).
  """
  out = {}
  for name, v in values.items():
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    finite = v[np.isfinite(v)]
    n = int(finite.size)
    mean = float(finite.mean()) if n else math.nan
    ci95 = float(1.96 * finite.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    out[name] = {"mean": mean, "ci95": ci95, "n": n, "nonfinite": int(v.size - n)}
  return out


def evaluate(
  eval_step: Callable[..., Metrics],
  theta: MetaParams,
  batches: Iterable[Task],
  key: PRNGKey,
) -> dict[str, dict[str, float | int]]:
  """Evaluates theta on held-out tasks: mean ± 95% CI per metric.

  Args:
    eval_step: from `make_eval_step` (jit it once and reuse it).
    theta: meta-parameters.
    batches: batches of held-out tasks `[T, ...]`.
    key: PRNG key; batch i uses `fold_in(key, i)`.

  Returns:
    See `summarize`.
  """
  collected: dict[str, list[np.ndarray]] = {}
  for i, batch in enumerate(batches):
    metrics = jax.device_get(eval_step(theta, batch, jax.random.fold_in(key, i)))
    for name, v in metrics.items():
      collected.setdefault(name, []).append(np.asarray(v))
  if not collected:
    raise ValueError("evaluate needs at least one batch of tasks")
  return summarize({k: np.concatenate(v) for k, v in collected.items()})
