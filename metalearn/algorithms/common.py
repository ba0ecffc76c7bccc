"""Pieces the supervised learners share: the inner loop on the support set, the query loss."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import jax
from flax import traverse_util

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


def outer_only(pattern: str) -> Partition:
  """The partition that keeps parameters whose path matches `pattern` out of the inner loop.

  A parameter's path is its keys joined by "/" (Conv4's: `conv_0/kernel`,
  `norm_0/scale`, `norm_0/offset`, ..., `head/kernel`, `head/bias`);
  `re.search(pattern, path)` selects the parameters the outer loop learns and
  the inner loop leaves alone (slow); every other one is adapted (fast).
  `outer_only("norm_")` keeps batch normalisation out of the inner loop, as
  the reference MAML code does (its batch-norm variables are not among the
  fast weights, github.com/cbfinn/maml `utils.normalize`).

  Raises:
    ValueError: here, if the pattern is not a regular expression; at the
      first split (the learner's first init or adapt), if it matches no
      parameter or every one.
  """
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"outer_only={pattern!r} is not a regular expression: {e}") from None

  def split(params):
    flat = traverse_util.flatten_dict(params, sep="/")
    slow = {k: v for k, v in flat.items() if regex.search(k)}
    if not slow or len(slow) == len(flat):
      what = "no" if not slow else "every"
      raise ValueError(
        f"outer_only={pattern!r} matches {what} parameter; paths are {', '.join(sorted(flat))}"
      )
    fast = {k: v for k, v in flat.items() if k not in slow}
    return traverse_util.unflatten_dict(fast, sep="/"), traverse_util.unflatten_dict(slow, sep="/")

  def join(fast, slow):
    flat = {
      **traverse_util.flatten_dict(fast, sep="/"),
      **traverse_util.flatten_dict(slow, sep="/"),
    }
    return traverse_util.unflatten_dict(flat, sep="/")

  return Partition(split, join)


def inner_loop(
  model: Model,
  objective: ep.Objective,
  *,
  update: inner.LearnedUpdate,
  inner_steps: int,
  partition: Partition = ALL,
  first_order: bool = False,
  remat: bool = False,
) -> Callable[[MetaParams, ep.Split], Params]:
  """`(theta, support) -> phi`: `inner_steps` steps of `update(theta)` on the support loss.

  Args:
    model: the network; theta holds its weights under `"params"`.
    objective: loss (and metrics) of the task.
    update: the inner update, `theta[update.name] -> optax transformation`
      (a fixed optimizer when `update.name` is None).
    inner_steps: K, a static int >= 0.
    partition: which part of the params the inner loop changes.
    first_order: see `inner.gradient_descent`.
    remat: see `inner.gradient_descent`.
  """
  inner.gradient.check_steps(inner_steps)

  def run(theta, support):
    fast, slow = partition.split(theta["params"])
    loss = lambda f: objective.loss(model.apply(partition.join(f, slow), support.x), support)
    optimizer = update.transform(theta[update.name] if update.name else None)
    fast, _, _ = inner.gradient_descent(
      loss,
      fast,
      num_steps=inner_steps,
      optimizer=optimizer,
      first_order=first_order,
      remat=remat,
    )
    return partition.join(fast, slow)

  return run


def init_with_update(model: Model, update: inner.LearnedUpdate, partition: Partition = ALL):
  """`(key, episode) -> theta`: `{"params"}`, plus the update's own meta-parameters if any.

  The model is initialised from `key` itself (so theta's `params` do not
  depend on the update), the update from `fold_in(key, 1)`.
  """

  def init(key, episode):
    params = model.init(key, episode.support.x)
    theta = {"params": params}
    if update.name is not None:
      fast = partition.split(params)[0]
      theta[update.name] = update.init(jax.random.fold_in(key, 1), fast)
    return theta

  return init


def query_loss(
  predictor: Callable[[jax.Array], jax.Array], objective: ep.Objective, query: ep.Split
) -> tuple[jax.Array, Metrics]:
  """Loss of a task's predictor on the query split, with the objective's metrics `query_<name>`."""
  predictions = predictor(query.x)
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
  adapt: Callable[[MetaParams, ep.Split, PRNGKey], Callable[[jax.Array], jax.Array]],
  objective: ep.Objective,
) -> MetaLearner:
  """A learner without inner steps (metric learning): its meta-loss is the query loss."""

  def meta_loss(theta, episode, key):
    ep.check_episode(episode, batched=False)
    return query_loss(adapt(theta, episode.support, key), objective, episode.query)

  return MetaLearner(init, adapt, meta_loss, name=name)
