"""Pieces every gradient-based learner shares: adapt by inner steps, predict, evaluate."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import optax

from metalearn import episodes as ep
from metalearn import inner
from metalearn.core import MetaLearner
from metalearn.models import Model
from metalearn.types import MetaParams, Metrics, Params, PRNGKey


class Partition(NamedTuple):
  """Which weights the inner loop adapts: `split(params) -> (fast, slow)`, `join`."""

  split: Callable[[Params], tuple[Params, Params]]
  join: Callable[[Params, Params], Params]


ALL = Partition(lambda p: (p, None), lambda fast, slow: fast)


def check_eval_steps(eval_steps: tuple[int, ...]) -> tuple[int, ...]:
  """Validates the inner-step counts reported by evaluation, e.g. `(0, 1, 10)`."""
  steps = tuple(int(s) for s in eval_steps)
  if not steps or min(steps) < 0:
    raise ValueError(f"eval_steps must be non-empty and >= 0, got {eval_steps!r}")
  return steps


class FinetuneFns(NamedTuple):
  """`adapt`, `predict` and `evaluate` of a learner whose theta holds `params`."""

  adapt: Callable[..., Params]
  predict: Callable[[Params, jax.Array], jax.Array]
  evaluate: Callable[[MetaParams, ep.Episode, PRNGKey], Metrics]


def finetune_fns(
  model: Model,
  objective: ep.Objective,
  *,
  optimizer: optax.GradientTransformation,
  inner_steps: int,
  eval_steps: tuple[int, ...],
  partition: Partition = ALL,
  precondition: Callable[[MetaParams], inner.gradient.Precondition | None] = lambda theta: None,
  first_order: bool = False,
  remat: bool = False,
) -> FinetuneFns:
  """Builds adapt/predict/evaluate for inner-loop gradient steps on `theta["params"]`.

  Args:
    model: the network.
    objective: loss and metrics of the task.
    optimizer: inner optimizer.
    inner_steps: default number of inner steps of `adapt`.
    eval_steps: step counts reported by `evaluate`.
    partition: which part of the params the inner loop changes.
    precondition: `theta -> (grads -> grads)`, a learned transform of the inner
      gradient (Meta-SGD, Meta-Curvature), or None.
    first_order: see `inner.gradient_descent`.
    remat: see `inner.gradient_descent`.
  """
  inner.gradient.check_steps(inner_steps)
  eval_steps = check_eval_steps(eval_steps)

  def support_loss(slow, support):
    return lambda fast: objective.loss(model.apply(partition.join(fast, slow), support.x), support)

  def adapt(theta, support, key, num_steps=None):
    del key
    fast, slow = partition.split(theta["params"])
    fast, _, _ = inner.gradient_descent(
      support_loss(slow, support),
      fast,
      num_steps=inner_steps if num_steps is None else num_steps,
      optimizer=optimizer,
      precondition=precondition(theta),
      first_order=first_order,
      remat=remat,
    )
    return partition.join(fast, slow)

  def evaluate(theta, episode, key):
    del key
    fast, slow = partition.split(theta["params"])
    query = episode.query

    def metric(fn):
      return lambda f: fn(model.apply(partition.join(f, slow), query.x), query)

    return inner.adaptation_curve(
      support_loss(slow, episode.support),
      fast,
      steps=eval_steps,
      optimizer=optimizer,
      precondition=precondition(theta),
      metrics={name: metric(fn) for name, fn in objective.metrics.items()},
    )

  return FinetuneFns(adapt, model.apply, evaluate)


def query_loss(
  fns: FinetuneFns, objective: ep.Objective, phi: Params, query: ep.Split
) -> tuple[jax.Array, Metrics]:
  """Loss of adapted weights on the query split, with the objective's metrics."""
  predictions = fns.predict(phi, query.x)
  metrics = {f"query_{n}": fn(predictions, query) for n, fn in objective.metrics.items()}
  return objective.loss(predictions, query), metrics


def check_ways(ways: int) -> int:
  """Validates N, the classes per task of a metric learner."""
  if not isinstance(ways, int) or isinstance(ways, bool) or ways < 2:
    raise ValueError(f"ways must be an int >= 2, got {ways!r}")
  return ways


def scored_learner(
  name: str,
  init: Callable[[PRNGKey, ep.Episode], MetaParams],
  adapt: Callable[..., Params],
  predict: Callable[[Params, jax.Array], jax.Array],
  objective: ep.Objective,
) -> MetaLearner:
  """A learner without inner steps (metric learning): meta-loss and metrics on the query.

  `evaluate` reports the objective's metrics under their plain names
  (e.g. `accuracy`), since there is no step count to qualify them with.
  """

  def scores(theta, episode, key):
    return predict(adapt(theta, episode.support, key), episode.query.x)

  def evaluate(theta, episode, key):
    s = scores(theta, episode, key)
    return {n: fn(s, episode.query) for n, fn in objective.metrics.items()}

  def meta_loss(theta, episode, key):
    s = scores(theta, episode, key)
    metrics = {f"query_{n}": fn(s, episode.query) for n, fn in objective.metrics.items()}
    return objective.loss(s, episode.query), metrics

  return MetaLearner(init, adapt, meta_loss, predict, evaluate, name=name)
