"""Trust-region policy optimisation's step: natural gradient by CG, then a backtracking search.

Given a loss `L(theta)` (minus a surrogate return) and the mean KL divergence
`KL(theta)` between the policy that collected the data and the policy at
`theta`, one step is

  d      = F^-1 (-grad L)            conjugate gradient on Fisher-vector products,
  beta   = sqrt(2 delta / d'F d)     the step on which the quadratic KL model is delta,
  theta' = theta + 0.8^k beta d      for the first k < 15 with L(theta') < L(theta)
                                     and KL(theta') < delta (else theta' = theta),

where `F` is the Hessian of `KL` at `theta` (the Fisher information of the
policy on the sampled states, since KL and its gradient vanish there), taken
as a forward-over-reverse product so that no matrix is formed. `theta` may
reach the policy through any differentiable map (for MAML-RL, the inner
policy-gradient step), and `F` is then that map's pull-back of the policy's
Fisher.

References:
  Schulman, Levine, Moritz, Jordan, Abbeel. Trust Region Policy Optimization.
  ICML 2015, Sec. 6 and Appendix C (CG on Fisher-vector products, the step
  scale, the line search).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from metalearn.inner import cg
from metalearn.types import PyTree


def fisher_vector_product(
  kl_fn: Callable[[PyTree], jax.Array], theta: PyTree, damping: float = 0.0
) -> Callable[[PyTree], PyTree]:
  """`v -> (H + damping I) v` with `H` the Hessian of `kl_fn` at `theta` (jvp of its grad)."""
  grad = jax.grad(kl_fn)

  def fvp(v: PyTree) -> PyTree:
    hv = jax.jvp(grad, (theta,), (v,))[1]
    return jax.tree_util.tree_map(lambda a, b: a + damping * b, hv, v)

  return fvp


def gaussian_fisher_vector_product(
  distribution_fn: Callable[[PyTree], tuple[jax.Array, jax.Array]],
  theta: PyTree,
  weights: jax.Array,
  damping: float = 0.0,
) -> Callable[[PyTree], PyTree]:
  """`v -> (J' M J + damping I) v`: the same Fisher as the KL's Hessian, in Gauss-Newton form.

  `distribution_fn(theta) -> (mean, log_std)`, each `[..., a]`, is linearised
  once at `theta` (`jax.linearize`, whose transpose gives `J'`), so each
  product costs two linear passes instead of a second-order one. For the
  KL `sum_s w_s KL(N_old(s) || N_theta(s))` the metric of a diagonal
  Gaussian is `M = diag(w_s / sigma^2, 2 w_s)` on (mean, log_std), and since
  the KL's gradient in (mean, log_std) vanishes at `theta`, `J' M J` is its
  Hessian exactly.

  Args:
    distribution_fn: theta -> the policy's (mean, log_std) at the sampled states.
    theta: where to linearise (the policy that collected the data).
    weights: `[...]` each state's weight in the mean KL (a mask over its count).
    damping: added to the diagonal.
  """
  (mean, log_std), jvp = jax.linearize(distribution_fn, theta)
  transpose = jax.linear_transpose(jvp, theta)
  w = weights[..., None]
  metric = (w * jnp.exp(-2 * log_std), 2.0 * w * jnp.ones_like(mean))

  def fvp(v: PyTree) -> PyTree:
    d_mean, d_log_std = jvp(v)
    cotangent = (
      (metric[0] * d_mean).astype(mean.dtype),
      (metric[1] * d_log_std).astype(log_std.dtype),
    )
    (jtmjv,) = transpose(cotangent)
    return jax.tree_util.tree_map(lambda a, b: a + damping * b, jtmjv, v)

  return fvp


def _vdot(a: PyTree, b: PyTree) -> jax.Array:
  return sum(
    jnp.vdot(x, y)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
  )


class TRPOInfo(NamedTuple):
  """What a step did: losses and KL before/after, the accepted step's fraction, CG's residual."""

  loss_before: jax.Array
  loss_after: jax.Array
  kl: jax.Array
  step_fraction: jax.Array  # 0.8^k of the accepted step, 0 when none was accepted
  accepted: jax.Array  # bool
  cg_residual: jax.Array


def trpo_step(
  loss_fn: Callable[[PyTree], jax.Array],
  kl_fn: Callable[[PyTree], jax.Array],
  theta: PyTree,
  *,
  max_kl: float = 0.01,
  cg_steps: int = 10,
  cg_damping: float = 1e-5,
  ls_steps: int = 15,
  ls_backtrack: float = 0.8,
  fvp: Callable[[PyTree], PyTree] | None = None,
) -> tuple[PyTree, TRPOInfo]:
  """One TRPO step from `theta` (see the module docstring); pure, ready for `jax.jit`.

  Args:
    loss_fn: `theta -> []` loss to decrease (minus the surrogate objective).
    kl_fn: `theta -> []` mean KL from the data-collecting policy (0 at `theta`).
    theta: current parameters, a PyTree.
    max_kl: delta, the trust region's radius in mean KL.
    cg_steps: conjugate-gradient iterations (static).
    cg_damping: added to the Fisher's diagonal in CG.
    ls_steps: backtracking trials (static).
    ls_backtrack: factor between two trials, in (0, 1).
    fvp: `v -> F v` without damping (e.g. `gaussian_fisher_vector_product`);
      default: the Hessian of `kl_fn` at `theta` (`fisher_vector_product`).

  Returns:
    `(new_theta, TRPOInfo)`; `new_theta` is `theta` when no trial satisfied
    both the decrease and the KL constraint.
  """
  if not max_kl > 0:
    raise ValueError(f"max_kl must be > 0, got {max_kl!r}")
  if not 0 < ls_backtrack < 1:
    raise ValueError(f"ls_backtrack must be in (0, 1), got {ls_backtrack!r}")
  if not isinstance(ls_steps, int) or ls_steps < 1:
    raise ValueError(f"ls_steps must be an int >= 1, got {ls_steps!r}")
  loss0, grad = jax.value_and_grad(loss_fn)(theta)
  if fvp is None:
    fvp = fisher_vector_product(kl_fn, theta)
  undamped = fvp
  fvp = lambda v: jax.tree_util.tree_map(lambda a, b: a + cg_damping * b, undamped(v), v)
  neg_grad = jax.tree_util.tree_map(jnp.negative, grad)
  solved = cg.conjugate_gradient(fvp, neg_grad, num_steps=cg_steps)
  direction = solved.x
  quad = _vdot(direction, fvp(direction))
  beta = jnp.sqrt(2 * max_kl / jnp.maximum(quad, jnp.finfo(quad.dtype).tiny))
  candidate = lambda frac: jax.tree_util.tree_map(
    lambda t, d: t + frac * beta * d, theta, direction
  )

  def cond(carry):
    k, accepted, _, _ = carry
    return (k < ls_steps) & ~accepted

  def body(carry):
    k, _, _, _ = carry
    trial = candidate(ls_backtrack**k)
    loss, kl = loss_fn(trial), kl_fn(trial)
    accepted = (loss < loss0) & (kl < max_kl)
    return jnp.where(accepted, k, k + 1), accepted, loss, kl

  init = (jnp.zeros([], jnp.int32), jnp.zeros([], bool), loss0, jnp.zeros_like(loss0))
  k, accepted, loss, kl = jax.lax.while_loop(cond, body, init)
  frac = jnp.where(accepted, ls_backtrack ** k.astype(loss0.dtype), 0.0)
  new_theta = jax.tree_util.tree_map(
    lambda new, old: jnp.where(accepted, new, old), candidate(frac), theta
  )
  info = TRPOInfo(
    loss_before=loss0,
    loss_after=jnp.where(accepted, loss, loss0),
    kl=jnp.where(accepted, kl, 0.0),
    step_fraction=frac,
    accepted=accepted,
    cg_residual=solved.residual_norm,
  )
  return new_theta, info
