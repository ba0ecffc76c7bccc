"""MAML and its relatives: first-order MAML, Meta-SGD, ANIL, Meta-Curvature.

All five share one equation. For a task with support loss L_s and query loss L_q,

  phi_0 = theta,   phi_{i+1} = phi_i - U(P(grad L_s(phi_i))),   loss(theta) = L_q(phi_K),

where U is the inner optimizer (SGD with step alpha by default) and P a learned
transform of the inner gradient. The meta-gradient is `jax.grad` of that loss:

- MAML: P = identity, full second-order meta-gradient through the K steps.
- first-order MAML: the inner gradients are constants (`stop_gradient`).
- Meta-SGD: P(g) = a * g with a learned per-parameter step `a` (U = identity).
- ANIL: phi only changes the head; the body is shared, adapted by the outer loop.
- Meta-Curvature: P(G) = G x_1 M_1 x_2 M_2 ... a learned matrix per tensor mode.

References:
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks. ICML 2017. Li, Zhou, Chen, Li. Meta-SGD: Learning to Learn Quickly for
  Few-Shot Learning. arXiv:1707.09835, 2017. Raghu, Raghu, Bengio, Vinyals. Rapid
  Learning or Feature Reuse? Towards Understanding the Effectiveness of MAML. ICLR
  2020. Park, Oliva. Meta-Curvature. NeurIPS 2019.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from metalearn import episodes as ep
from metalearn import inner
from metalearn.algorithms import common
from metalearn.core import MetaLearner
from metalearn.models import Model, as_model

Objective = str | ep.Objective


def _learner(
  name: str,
  model: nn.Module | Model,
  *,
  inner_steps: int,
  optimizer: optax.GradientTransformation,
  eval_steps: tuple[int, ...],
  objective: Objective,
  first_order: bool = False,
  remat: bool = False,
  partition: common.Partition = common.ALL,
  init_extra=lambda fast: {},
  precondition=lambda theta: None,
) -> MetaLearner:
  """The shared MAML skeleton; each public factory fills in what differs."""
  model, objective = as_model(model), ep.get_objective(objective)
  fns = common.finetune_fns(
    model,
    objective,
    optimizer=optimizer,
    inner_steps=inner_steps,
    eval_steps=eval_steps,
    partition=partition,
    precondition=precondition,
    first_order=first_order,
    remat=remat,
  )

  def init(key, episode):
    params = model.init(key, episode.support.x)
    return {"params": params, **init_extra(partition.split(params)[0])}

  def meta_loss(theta, episode, key):
    phi = fns.adapt(theta, episode.support, key)
    return common.query_loss(fns, objective, phi, episode.query)

  return MetaLearner(init, fns.adapt, meta_loss, fns.predict, fns.evaluate, name=name)


def maml(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  first_order: bool = False,
  remat: bool = False,
  inner_optimizer: optax.GradientTransformation | None = None,
  eval_steps: tuple[int, ...] = (0, 1, 10),
  objective: Objective = "mse",
) -> MetaLearner:
  """MAML: theta is an initialisation; the meta-loss is the query loss after K inner steps.

  Args:
    model: network (flax module with params only, or a `Model`).
    inner_lr: inner SGD step size alpha (ignored when `inner_optimizer` is given).
    inner_steps: K, inner steps during meta-training.
    first_order: drop the second-order terms (first-order MAML).
    remat: rematerialise the inner loop in the backward pass.
    inner_optimizer: any optax transformation for the inner loop.
    eval_steps: inner step counts reported by `evaluate`.
    objective: `"mse"`, `"cross_entropy"` or an `episodes.Objective`.

  Returns:
    A `MetaLearner` whose theta is `{"params": ...}`.

  References: Finn, Abbeel, Levine, ICML 2017 (Algorithm 2; first-order in Sec. 5.2).
  """
  return _learner(
    "fomaml" if first_order else "maml",
    model,
    inner_steps=inner_steps,
    optimizer=inner_optimizer or inner.sgd(inner_lr),
    eval_steps=eval_steps,
    objective=objective,
    first_order=first_order,
    remat=remat,
  )


def fomaml(model: nn.Module | Model, **kwargs) -> MetaLearner:
  """First-order MAML: `maml(..., first_order=True)`. References: Finn et al. 2017, Sec. 5.2."""
  return maml(model, first_order=True, **kwargs)


def metasgd(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  remat: bool = False,
  eval_steps: tuple[int, ...] = (0, 1, 10),
  objective: Objective = "mse",
) -> MetaLearner:
  """Meta-SGD: learns a per-parameter inner step `a` with the initialisation.

  `phi = theta - a * grad L_s(theta)`; theta is `{"params", "lr"}` with `lr`
  shaped like `params` and initialised to `inner_lr` everywhere, so before any
  meta-training (or with `lr` held fixed) Meta-SGD is MAML.

  References: Li, Zhou, Chen, Li. Meta-SGD, arXiv:1707.09835 (2017), Eq. 3-4.
  """
  inner.sgd(inner_lr)  # validates inner_lr
  return _learner(
    "metasgd",
    model,
    inner_steps=inner_steps,
    optimizer=optax.sgd(1.0),
    eval_steps=eval_steps,
    objective=objective,
    remat=remat,
    init_extra=lambda fast: {
      "lr": jax.tree_util.tree_map(lambda p: jnp.full_like(p, inner_lr), fast)
    },
    precondition=lambda theta: functools.partial(jax.tree_util.tree_map, jnp.multiply, theta["lr"]),
  )


def anil(
  model: nn.Module | Model,
  *,
  head: str = "head",
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  first_order: bool = False,
  remat: bool = False,
  inner_optimizer: optax.GradientTransformation | None = None,
  eval_steps: tuple[int, ...] = (0, 1, 10),
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
    optimizer=inner_optimizer or inner.sgd(inner_lr),
    eval_steps=eval_steps,
    objective=objective,
    first_order=first_order,
    remat=remat,
    partition=common.Partition(split, lambda fast, slow: {**slow, **fast}),
  )


def _mode_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Tensor modes Meta-Curvature acts on: `[k_h, k_w, in, out]` -> `[k_h*k_w, in, out]`."""
  if len(shape) <= 2:
    return shape
  spatial = 1
  for d in shape[:-2]:
    spatial *= d
  return (spatial, *shape[-2:])


def curvature_transform(grad: jax.Array, matrices: list[jax.Array]) -> jax.Array:
  """`G x_1 M_1 x_2 M_2 ...`: one matrix product along each mode of the gradient tensor.

  Args:
    grad: a parameter's gradient, any shape (conv kernels are viewed as
      `[k*k, in, out]`).
    matrices: one `[d_m, d_m]` matrix per mode `m`.

  Returns:
    The transformed gradient, shaped like `grad`.
  """
  g = grad.reshape(_mode_shape(grad.shape))
  for axis, m in enumerate(matrices):
    g = jnp.moveaxis(jnp.tensordot(m, g, axes=(1, axis)), 0, axis)
  return g.reshape(grad.shape)


def metacurvature(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  remat: bool = False,
  eval_steps: tuple[int, ...] = (0, 1, 10),
  objective: Objective = "mse",
) -> MetaLearner:
  """Meta-Curvature: a learned, parameter-shared preconditioner of the inner gradient.

  For each weight tensor, one matrix per mode (identity at initialisation):
  `phi = theta - alpha * (G x_1 M_1 x_2 M_2 x_3 M_3)`, with `G` the gradient.
  theta is `{"params", "curvature"}`; at initialisation this is MAML.

  References: Park, Oliva. Meta-Curvature. NeurIPS 2019, Eq. 5-7.
  """

  def init_extra(fast):
    eye = lambda p: [jnp.eye(d, dtype=p.dtype) for d in _mode_shape(p.shape)]
    return {"curvature": jax.tree_util.tree_map(eye, fast)}

  def precondition(theta):
    return lambda grads: jax.tree_util.tree_map(
      curvature_transform,
      grads,
      theta["curvature"],
      is_leaf=lambda x: isinstance(x, jax.Array),
    )

  return _learner(
    "metacurvature",
    model,
    inner_steps=inner_steps,
    optimizer=inner.sgd(inner_lr),
    eval_steps=eval_steps,
    objective=objective,
    remat=remat,
    init_extra=init_extra,
    precondition=precondition,
  )
