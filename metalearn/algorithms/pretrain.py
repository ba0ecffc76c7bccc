"""The transfer baseline: pretrain one model on all tasks merged, fine-tune per task.

Meta-training minimises the plain loss of one model on the union of every
task's support and query examples (no inner loop); at test time the model is
fine-tuned on the support set by the inner optimizer. This is the baseline
MAML is compared against ("pretrained" in Finn et al. 2017, Fig. 2).

References:
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning. ICML 2017, Sec. 5.1
  (the "pretrained" baseline); Chen et al. A Closer Look at Few-shot
  Classification. ICLR 2019 (the transfer baseline in general).
"""

from __future__ import annotations

import flax.linen as nn
import optax

from metalearn import episodes as ep
from metalearn import inner
from metalearn.algorithms import common
from metalearn.core import MetaLearner, predictor
from metalearn.models import Model, as_model


def pretrain(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 10,
  inner_optimizer: optax.GradientTransformation | None = None,
  objective: str | ep.Objective = "mse",
) -> MetaLearner:
  """Joint pretraining on merged tasks, then `inner_steps` fine-tuning steps in `adapt`.

  Args:
    model: network.
    inner_lr: fine-tuning SGD step (ignored when `inner_optimizer` is given).
    inner_steps: fine-tuning steps of `adapt`.
    inner_optimizer: any optax transformation for fine-tuning.
    objective: `"mse"`, `"cross_entropy"` or an `episodes.Objective`.

  Returns:
    A `MetaLearner`; its meta-loss ignores the support/query distinction.
  """
  model, objective = as_model(model), ep.get_objective(objective)
  update = inner.fixed(inner_optimizer or inner.sgd(inner_lr))
  run = common.inner_loop(model, objective, update=update, inner_steps=inner_steps)

  def adapt(theta, support, key):
    del key
    return predictor(model.apply, run(theta, support))

  def meta_loss(theta, episode, key):
    del key
    ep.check_episode(episode, batched=False)
    merged = ep.merge(episode.support, episode.query)
    return common.query_loss(predictor(model.apply, theta["params"]), objective, merged)

  init = common.init_with_update(model, update)
  return MetaLearner(init, adapt, meta_loss, name="pretrain")
