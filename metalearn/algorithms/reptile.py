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
from metalearn.core import MetaLearner, predictor
from metalearn.models import Model, as_model


def reptile(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 5,
  inner_optimizer: optax.GradientTransformation | None = None,
  objective: str | ep.Objective = "mse",
) -> MetaLearner:
  """Reptile with `inner_steps` steps of the inner optimizer on the support set.

  Args:
    model: network.
    inner_lr: inner SGD step (ignored when `inner_optimizer` is given).
    inner_steps: k, inner steps per task during meta-training.
    inner_optimizer: any optax transformation for the inner loop.
    objective: `"mse"`, `"cross_entropy"` or an `episodes.Objective`.

  Returns:
    A `MetaLearner` with `meta_grad(theta, episode, key) -> ({"params": theta - phi}, metrics)`.
  """
  model, objective = as_model(model), ep.get_objective(objective)
  update = inner.fixed(inner_optimizer or inner.sgd(inner_lr))
  run = common.inner_loop(model, objective, update=update, inner_steps=inner_steps)

  def adapt(theta, support, key):
    del key
    return predictor(model.apply, run(theta, support))

  def meta_loss(theta, episode, key):
    ep.check_episode(episode, batched=False)
    return common.query_loss(adapt(theta, episode.support, key), objective, episode.query)

  def meta_grad(theta, episode, key):
    del key
    ep.check_episode(episode, batched=False)
    phi = run(theta, episode.support)
    loss, metrics = common.query_loss(predictor(model.apply, phi), objective, episode.query)
    direction = jax.tree_util.tree_map(lambda t, p: t - p, theta["params"], phi)
    return {"params": direction}, {**metrics, "loss": loss}

  init = common.init_with_update(model, update)
  return MetaLearner(init, adapt, meta_loss, meta_grad, "reptile")
