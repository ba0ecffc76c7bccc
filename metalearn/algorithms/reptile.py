"""Reptile: move the initialisation towards the weights each task's training reaches.

For a task, phi = SGD^k(theta) on its support loss; the update is
theta <- theta + epsilon * mean_tasks(phi - theta). Written as a meta-gradient,
g = theta - phi, which the outer optimizer applies (with `optax.sgd(epsilon)`
this is Algorithm 2 of the paper exactly; with Adam, the common variant).
Reptile is not the gradient of any loss, so it overrides `meta_grad`.

References:
  Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms.
  arXiv:1803.02999, 2018 (Algorithm 2, batched version).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import optax

from metalearn import episodes as ep
from metalearn import inner
from metalearn.algorithms import common
from metalearn.core import MetaLearner
from metalearn.models import Model, as_model


def reptile(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 5,
  inner_optimizer: optax.GradientTransformation | None = None,
  eval_steps: tuple[int, ...] = (0, 1, 10),
  objective: str | ep.Objective = "mse",
) -> MetaLearner:
  """Reptile with `inner_steps` steps of the inner optimizer on the support set.

  Args:
    model: network.
    inner_lr: inner SGD step (ignored when `inner_optimizer` is given).
    inner_steps: k, inner steps per task during meta-training.
    inner_optimizer: any optax transformation for the inner loop.
    eval_steps: inner step counts reported by `evaluate`.
    objective: `"mse"`, `"cross_entropy"` or an `episodes.Objective`.

  Returns:
    A `MetaLearner` with `meta_grad(theta, episode, key) -> ({"params": theta - phi}, metrics)`.
  """
  model, objective = as_model(model), ep.get_objective(objective)
  fns = common.finetune_fns(
    model,
    objective,
    optimizer=inner_optimizer or inner.sgd(inner_lr),
    inner_steps=inner_steps,
    eval_steps=eval_steps,
  )

  def init(key, episode):
    return {"params": model.init(key, episode.support.x)}

  def meta_loss(theta, episode, key):
    phi = fns.adapt(theta, episode.support, key)
    return common.query_loss(fns, objective, phi, episode.query)

  def meta_grad(theta, episode, key):
    phi = fns.adapt(theta, episode.support, key)
    loss, metrics = common.query_loss(fns, objective, phi, episode.query)
    direction = jax.tree_util.tree_map(lambda t, p: t - p, theta["params"], phi)
    return {"params": direction}, {**metrics, "loss": loss}

  return MetaLearner(init, fns.adapt, meta_loss, fns.predict, fns.evaluate, meta_grad, "reptile")
