"""A meta-objective with a known truncation bias: the step size of gradient descent on a quadratic.

Gradient descent with step size eta = exp(theta) on `f(x) = 1/2 sum_i h_i x_i^2`
from x_0 gives `x_{t,i} = (1 - eta h_i)^t x_{0,i}`, so with `r_i = (1 - eta h_i)^2`
and `c_i = h_i x_{0,i}^2 / 2` the meta-loss over an unroll of T steps is

  L(theta) = (1 / T) sum_{t=1}^{T} sum_i c_i r_i^t,
  dL / dtheta = (eta / T) sum_t sum_i c_i t r_i^{t-1} dr_i / deta,
  dr_i / deta = -2 h_i (1 - eta h_i).

Truncated backpropagation with truncations of K steps holds each
truncation's start x_{jK} fixed, which replaces the factor t above by k(t) =
t - jK, the step's index inside its truncation (1 ... K):

  g_TBPTT(theta) = (eta / T) sum_t sum_i c_i k(t) r_i^{t-1} dr_i / deta.

Every term keeps its sign, but the slowly decaying directions (small h_i),
whose losses persist over the whole horizon, lose weight against the fast
ones: with h = (1, 0.01), T = 100 and K = 10 (the defaults here) L is least
at eta = 1.126, while the truncated gradient is zero near eta = 1.02 and has
the wrong sign in between, the short-horizon bias of Wu et al. (2018).

References:
  Wu, Ren, Liao, Grosse. Understanding short-horizon bias in stochastic
  meta-optimization. ICLR 2018 (the noiseless quadratic of Sec. 3).
  Vicol, Metz, Sohl-Dickstein. Unbiased gradient estimation in unrolled
  computation graphs with persistent evolution strategies. ICML 2021.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metalearn.learned_optim.estimators import Unrolled

CURVATURES = (1.0, 0.01)


def _check(unroll: int, truncation: int) -> None:
  for name, n in (("unroll", unroll), ("truncation", truncation)):
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
      raise ValueError(f"{name} must be an int >= 1, got {n!r}")
  if unroll % truncation:
    raise ValueError(f"unroll ({unroll}) must be a multiple of truncation ({truncation})")


def step_size_problem(
  h: jax.Array, x0: jax.Array, *, unroll: int = 100, truncation: int = 10
) -> Unrolled:
  """Gradient descent `x <- x - exp(theta) h * x` as an `Unrolled`; theta is log eta `[]`.

  Args:
    h: `[d]` curvatures (> 0).
    x0: `[d]` starting point.
    unroll: T.
    truncation: K; T % K == 0.

  Returns:
    An `Unrolled` (the task argument is unused: pass None) whose losses sum to
    L(theta), and whose summary gives `final_loss` f(x_T).
  """
  _check(unroll, truncation)
  loss = lambda x: 0.5 * jnp.sum(h * x**2)

  def truncation_fn(theta, x, task):
    del task

    def step(x, _):
      x = x - jnp.exp(theta) * h * x
      return x, loss(x)

    x, losses = jax.lax.scan(step, x, None, length=truncation)
    return x, jnp.sum(losses) / unroll

  init = lambda theta, task: jnp.asarray(x0, jnp.result_type(theta))
  summary = lambda x, task: {"final_loss": loss(x)}
  return Unrolled(init, truncation_fn, unroll // truncation, summary)


def closed_form(
  h: jax.Array, x0: jax.Array, theta: jax.Array, *, unroll: int = 100, truncation: int = 10
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(L, dL/dtheta, g_TBPTT)` at theta = log eta, from the formulas of the module docstring."""
  _check(unroll, truncation)
  eta = jnp.exp(theta)
  t = jnp.arange(1, unroll + 1)[:, None]
  k = (t - 1) % truncation + 1
  r = (1 - eta * h) ** 2
  dr = -2 * h * (1 - eta * h)
  c = 0.5 * h * x0**2
  loss = jnp.sum(c * r**t) / unroll
  grad = eta * jnp.sum(c * t * r ** (t - 1) * dr) / unroll
  truncated = eta * jnp.sum(c * k * r ** (t - 1) * dr) / unroll
  return loss, grad, truncated
