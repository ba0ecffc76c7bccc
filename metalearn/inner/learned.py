"""Inner updates as functions of theta: `theta -> optax.GradientTransformation`.

A gradient-based learner adapts with `phi <- phi + u`, `u, s = opt.update(g, s, phi)`,
where `opt` is built from the meta-parameters. MAML's `opt` is fixed SGD;
Meta-SGD's scales each coordinate by a learned rate; Meta-Curvature's multiplies
each gradient tensor by learned matrices along its modes before SGD; a learned
optimizer (an LSTM whose weights are in theta) is one more transformation of
the same kind. Because they are optax transformations, they compose with
`optax.chain` and any optax optimizer is a valid inner update of any
gradient-based method, with its state carried through the inner `lax.scan`.

A `LearnedUpdate` pairs the construction with the initialisation of its own
meta-parameters, which the learner stores in theta under `LearnedUpdate.name`
and meta-learns with the initialisation.

References:
  Li, Zhou, Chen, Li. Meta-SGD: Learning to Learn Quickly for Few-Shot Learning.
  arXiv:1707.09835, 2017 (Eq. 3-4). Park, Oliva. Meta-Curvature. NeurIPS 2019
  (Eq. 5-7). Andrychowicz et al. Learning to learn by gradient descent by
  gradient descent. NeurIPS 2016 (the learned optimizer as an update rule).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metalearn.inner.gradient import sgd as checked_sgd
from metalearn.types import Params, PRNGKey, PyTree


class LearnedUpdate(NamedTuple):
  """An inner update built from meta-parameters of its own.

  Attributes:
    init: `(key, fast_params) -> meta-parameters` of the update (None for a
      fixed one), from the weights the inner loop adapts.
    transform: `meta-parameters -> optax.GradientTransformation`, the inner
      optimizer for those values (traced: gradients flow into them).
    name: the key of theta under which the meta-parameters are stored (None
      for a fixed update, which stores nothing).
  """

  init: Callable[[PRNGKey, Params], PyTree]
  transform: Callable[[PyTree], optax.GradientTransformation]
  name: str | None = None


def fixed(optimizer: optax.GradientTransformation) -> LearnedUpdate:
  """An optax optimizer that meta-learns nothing (MAML's SGD, or Adam, as the inner update)."""
  return LearnedUpdate(lambda key, fast: None, lambda meta: optimizer, None)


def as_learned_update(update: optax.GradientTransformation | LearnedUpdate) -> LearnedUpdate:
  """Takes a plain optax transformation (made `fixed`) or a `LearnedUpdate` as it is."""
  if isinstance(update, LearnedUpdate):
    return update
  if isinstance(update, optax.GradientTransformation):
    return fixed(update)
  raise TypeError(
    "an inner optimizer must be an optax.GradientTransformation or an "
    f"inner.LearnedUpdate, got {type(update).__name__}"
  )


def scale_by_learned_rates(rates: Params) -> optax.GradientTransformation:
  """`u = -rates * g` coordinate by coordinate (Meta-SGD's update; rates shaped like params)."""

  def update(grads, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda a, g: -(a * g), rates, grads), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def learned_rates(initial_lr: float, name: str = "lr") -> LearnedUpdate:
  """Meta-SGD's learned per-parameter rates, all `initial_lr` at initialisation.

  With the rates held at `initial_lr` the update is SGD at that rate exactly
  (`-(a * g)` equals optax's `-a * g` bit for bit), i.e. Meta-SGD is MAML.
  """
  checked_sgd(initial_lr)  # the one check of inner_lr

  def init(key, fast):
    del key
    return jax.tree_util.tree_map(lambda p: jnp.full_like(p, initial_lr), fast)

  return LearnedUpdate(init, scale_by_learned_rates, name)


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


def precondition_by_curvature(matrices: PyTree) -> optax.GradientTransformation:
  """Meta-Curvature's preconditioner: each gradient tensor times one matrix per mode."""

  def update(grads, state, params=None):
    del params
    out = jax.tree_util.tree_map(
      curvature_transform, grads, matrices, is_leaf=lambda x: isinstance(x, jax.Array)
    )
    return out, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def learned_curvature(inner_lr: float, name: str = "curvature") -> LearnedUpdate:
  """Meta-Curvature then SGD at `inner_lr`; identity matrices at initialisation (MAML)."""
  sgd = checked_sgd(inner_lr)

  def init(key: Any, fast):
    del key
    eye = lambda p: [jnp.eye(d, dtype=p.dtype) for d in _mode_shape(p.shape)]
    return jax.tree_util.tree_map(eye, fast)

  return LearnedUpdate(init, lambda m: optax.chain(precondition_by_curvature(m), sgd), name)
