"""MAML and its relatives: first-order MAML, Meta-SGD, ANIL, Meta-Curvature.

All five share one equation. For a task with support loss L_s and query loss L_q,

  phi_0 = theta,   phi_{i+1} = phi_i - U(P(grad L_s(phi_i))),   loss(theta) = L_q(phi_K),

where U o P is the inner update, an optax transformation built from theta
(`metalearn.inner.learned`): SGD with step alpha, any optax optimizer, or a
learned one. The meta-gradient is `jax.grad` of that loss:

- MAML: U o P = SGD, full second-order meta-gradient through the K steps.
- first-order MAML: the inner gradients are constants (`stop_gradient`).
- Meta-SGD: U o P(g) = -a * g with a learned per-parameter step `a`.
- ANIL: phi only changes the head; the body is shared, adapted by the outer loop.
- Meta-Curvature: P(G) = G x_1 M_1 x_2 M_2 ... a learned matrix per tensor mode, U = SGD.

References:
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks. ICML 2017. Li, Zhou, Chen, Li. Meta-SGD: Learning to Learn Quickly for
  Few-Shot Learning. arXiv:1707.09835, 2017. Raghu, Raghu, Bengio, Vinyals. Rapid
  Learning or Feature Reuse? Towards Understanding the Effectiveness of MAML. ICLR
  2020. Park, Oliva. Meta-Curvature. NeurIPS 2019.
"""

from __future__ import annotations

import flax.linen as nn
import optax

from metalearn import episodes as ep
from metalearn import inner
from metalearn.algorithms import common
from metalearn.core import MetaLearner, predictor
from metalearn.models import Model, as_model

Objective = str | ep.Objective
InnerOptimizer = optax.GradientTransformation | inner.LearnedUpdate


def _partition(outer_only: str) -> common.Partition:
  return common.outer_only(outer_only) if outer_only else common.ALL


def _learner(
  name: str,
  model: nn.Module | Model,
  *,
  inner_steps: int,
  update: InnerOptimizer,
  objective: Objective,
  first_order: bool = False,
  remat: bool = False,
  partition: common.Partition = common.ALL,
) -> MetaLearner:
  """The shared MAML skeleton: adapt by the inner update, score the query."""
  model, objective = as_model(model), ep.get_objective(objective)
  update = inner.as_learned_update(update)
  run = common.inner_loop(
    model,
    objective,
    update=update,
    inner_steps=inner_steps,
    partition=partition,
    first_order=first_order,
    remat=remat,
  )

  def adapt(theta, support, key):
    del key
    return predictor(model.apply, run(theta, support))

  def meta_loss(theta, episode, key):
    ep.check_episode(episode, batched=False)
    return common.query_loss(adapt(theta, episode.support, key), objective, episode.query)

  return MetaLearner(common.init_with_update(model, update, partition), adapt, meta_loss, name=name)


def maml(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  first_order: bool = False,
  remat: bool = False,
  inner_optimizer: InnerOptimizer | None = None,
  outer_only: str = "",
  objective: Objective = "mse",
) -> MetaLearner:
  """MAML: theta is an initialisation; the meta-loss is the query loss after K inner steps.

  Args:
    model: network (flax module with params only, or a `Model`).
    inner_lr: inner SGD step size alpha (ignored when `inner_optimizer` is given).
    inner_steps: K, inner steps during meta-training.
    first_order: drop the second-order terms (first-order MAML).
    remat: rematerialise the inner loop in the backward pass.
    inner_optimizer: the inner update instead of SGD: any optax transformation
      (Adam, with its state carried through the inner loop) or an
      `inner.LearnedUpdate`, whose meta-parameters are learned jointly with
      the initialisation (stored in theta under its `name`).
    outer_only: a regular expression over parameter paths (`"norm_"`: batch
      norm); the parameters it matches are learned by the outer loop only,
      not adapted in the inner loop (`common.outer_only`). "" adapts all.
    objective: `"mse"`, `"cross_entropy"` or an `episodes.Objective`.

  Returns:
    A `MetaLearner` whose theta is `{"params": ...}` (plus a learned update's
    meta-parameters); `adapt` returns the adapted network as a predictor.

  References: Finn, Abbeel, Levine, ICML 2017 (Algorithm 2; first-order in Sec. 5.2).
  """
  return _learner(
    "fomaml" if first_order else "maml",
    model,
    inner_steps=inner_steps,
    update=inner_optimizer or inner.sgd(inner_lr),
    objective=objective,
    first_order=first_order,
    remat=remat,
    partition=_partition(outer_only),
  )


def fomaml(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  remat: bool = False,
  inner_optimizer: InnerOptimizer | None = None,
  outer_only: str = "",
  objective: Objective = "mse",
) -> MetaLearner:
  """First-order MAML: `maml(..., first_order=True)`. References: Finn et al. 2017, Sec. 5.2."""
  return maml(
    model,
    inner_lr=inner_lr,
    inner_steps=inner_steps,
    first_order=True,
    remat=remat,
    inner_optimizer=inner_optimizer,
    outer_only=outer_only,
    objective=objective,
  )


def metasgd(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  remat: bool = False,
  outer_only: str = "",
  objective: Objective = "mse",
) -> MetaLearner:
  """Meta-SGD: learns a per-parameter inner step `a` with the initialisation.

  `phi = theta - a * grad L_s(theta)`, the inner update `inner.learned_rates`;
  theta is `{"params", "lr"}` with `lr` shaped like `params` and initialised
  to `inner_lr` everywhere, so before any meta-training (or with `lr` held
  fixed) Meta-SGD is MAML, bit for bit. `outer_only` as in `maml` (the
  parameters it matches get no learned step).

  References: Li, Zhou, Chen, Li. Meta-SGD, arXiv:1707.09835 (2017), Eq. 3-4.
  """
  return _learner(
    "metasgd",
    model,
    inner_steps=inner_steps,
    update=inner.learned_rates(inner_lr, name="lr"),
    objective=objective,
    remat=remat,
    partition=_partition(outer_only),
  )


def anil(
  model: nn.Module | Model,
  *,
  head: str = "head",
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  first_order: bool = False,
  remat: bool = False,
  inner_optimizer: InnerOptimizer | None = None,
  objective: Objective = "mse",
) -> MetaLearner:
  """ANIL: MAML whose inner loop adapts only the top-level parameter group `head`.

  The body is meta-learned by the outer loop only (and, second order, through
  the head's adaptation).

  References: Raghu et al., Rapid Learning or Feature Reuse?, ICLR 2020, Sec. 4.
  """

  def split(params):
    if head not in params:
      raise ValueError(f"anil: the model has no parameter group {head!r}; has {sorted(params)}")
    return {head: params[head]}, {k: v for k, v in params.items() if k != head}

  return _learner(
    "anil",
    model,
    inner_steps=inner_steps,
    update=inner_optimizer or inner.sgd(inner_lr),
    objective=objective,
    first_order=first_order,
    remat=remat,
    partition=common.Partition(split, lambda fast, slow: {**slow, **fast}),
  )


def metacurvature(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  remat: bool = False,
  outer_only: str = "",
  objective: Objective = "mse",
) -> MetaLearner:
  """Meta-Curvature: a learned, parameter-shared preconditioner of the inner gradient.

  For each weight tensor, one matrix per mode (identity at initialisation):
  `phi = theta - alpha * (G x_1 M_1 x_2 M_2 x_3 M_3)`, with `G` the gradient
  (the inner update `inner.learned_curvature`). theta is `{"params",
  "curvature"}`; at initialisation this is MAML. `outer_only` as in `maml`.

  References: Park, Oliva. Meta-Curvature. NeurIPS 2019, Eq. 5-7.
  """
  return _learner(
    "metacurvature",
    model,
    inner_steps=inner_steps,
    update=inner.learned_curvature(inner_lr, name="curvature"),
    objective=objective,
    remat=remat,
    partition=_partition(outer_only),
  )
