"""iMAML's proximal inner problem and its implicit meta-gradient.

For one task with inner (support) loss `L_s` and outer (query) loss `L_q`,
iMAML adapts by solving the proximal problem

  phi*(theta) = argmin_phi  L_s(phi) + (lam / 2) ||phi - theta||^2

approximately, with K steps of an inner optimizer started at theta, and
meta-learns theta with

  d L_q(phi*(theta)) / d theta = (I + H / lam)^-1 grad L_q(phi*),   H = hess L_s(phi*),

which the implicit function theorem gives from the optimality condition
`grad L_s(phi*) + lam (phi* - theta) = 0`. The system is solved from products
`H v` (forward-over-reverse: `jax.linearize` of `jax.grad`; the Hessian is never
formed) by a fixed number of conjugate-gradient iterations (or Neumann-series
terms), so it is `jit`- and `vmap`-compatible. Nothing of the inner loop is kept
for the backward pass: memory does not grow with K.

Two entry points put the gradient behind `jax.custom_vjp`, so `jax.grad` of a
loss built on them is the implicit gradient and the outer loop has no special
case:

- `implicit_solve(inner_loss, ...)`: `(theta, data) -> phi*`; the linear solve
  runs in the backward pass on whatever cotangent arrives (any outer loss).
- `implicit_meta_loss(inner_loss, outer_loss, ...)`:
  `(theta, inner_data, outer_data) -> (L_q(phi*), aux)`; the solve runs in the
  forward pass, so its residual is returned in `aux["cg_residual"]` and can be
  reported (iMAML's `meta_loss` uses this one).

Both differentiate the data arguments too (by the same theorem:
`d/d data = -(d grad_phi L_s / d data)^T (H + lam I)^-1 phi_bar`), computed only
when a data argument is being differentiated. The losses take the data they
depend on as an argument and must not close over traced values (pass those in
`data`); hyperparameters are static Python numbers.

The implicit gradient is exact only at an exact minimiser of the proximal
problem (K large enough, H + lam I positive definite at phi*) and an exact
solve; `aux["inner_grad_norm"]` and `aux["cg_residual"]` measure how far from
both a run is.

References:
  Rajeswaran, Finn, Kakade, Levine. Meta-Learning with Implicit Gradients.
  NeurIPS 2019 (Eq. 3-6, Algorithm 2 and Sec. 3.1). Lorraine, Vicol, Duvenaud.
  Optimizing Millions of Hyperparameters by Implicit Differentiation. AISTATS
  2020 (Neumann series).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

from metalearn import _jaxpr
from metalearn.inner import cg
from metalearn.inner.gradient import LossFn, check_steps, gradient_descent
from metalearn.types import Metrics, Params, PyTree

InnerLoss = Callable[[Params, PyTree], jax.Array]  # (phi, data) -> scalar
OuterLoss = Callable[[Params, PyTree], tuple[jax.Array, Metrics]]  # (phi, data) -> (loss, aux)
Solver = Callable[[cg.Matvec, PyTree], cg.SolveResult]  # (matvec, b) -> (x, residual norm)

SOLVERS = ("cg", "neumann")


def check_lam(lam: float) -> float:
  """Returns `lam` as a Python float, raising ValueError unless it is > 0."""
  lam = float(lam)
  if not lam > 0:
    raise ValueError(f"lam must be > 0, got {lam}")
  return lam


def make_solver(solver: str | Solver, *, cg_steps: int = 5, damping: float = 0.0) -> Solver:
  """A linear solver `(matvec, b) -> SolveResult` for `(I + H / lam) u = g`.

  Args:
    solver: `"cg"` (conjugate gradient), `"neumann"` (the series
      `sum_k (-H / lam)^k g`, i.e. step size 1, which converges when the
      eigenvalues of `H / lam + damping` lie in (-1, 1)), or a callable
      returned as is (e.g. `functools.partial(cg.neumann, num_steps=20, alpha=0.5)`).
    cg_steps: iterations (CG) or terms (Neumann), an int >= 1.
    damping: `>= 0`, solves `((1 + damping) I + H / lam) u = g` instead, which
      keeps the system positive definite where the inner loss is not convex.

  Returns:
    The solver.

  Raises:
    ValueError: for an unknown name, `cg_steps < 1` or `damping < 0`.
  """
  if callable(solver):
    return solver
  if solver not in SOLVERS:
    raise ValueError(f"solver must be one of {SOLVERS} or a callable, got {solver!r}")
  if not isinstance(cg_steps, int) or isinstance(cg_steps, bool) or cg_steps < 1:
    raise ValueError(f"cg_steps must be an int >= 1, got {cg_steps!r}")
  if not float(damping) >= 0:
    raise ValueError(f"damping must be >= 0, got {damping}")
  fn = cg.conjugate_gradient if solver == "cg" else cg.neumann
  return functools.partial(fn, num_steps=cg_steps, damping=float(damping))


def proximal_loss(loss_fn: LossFn, theta: Params, lam: float) -> LossFn:
  """`phi -> loss_fn(phi) + (lam / 2) ||phi - theta||^2`, the squared norm over all leaves."""

  def loss(phi):
    sq = jax.tree_util.tree_map(lambda p, t: jnp.sum(jnp.square(p - t)), phi, theta)
    return loss_fn(phi) + 0.5 * lam * sum(jax.tree_util.tree_leaves(sq))

  return loss


class Newton(NamedTuple):
  """The proximal problem's inner solver as damped Newton steps (pass it as `optimizer`).

  Each step solves `(H + lam I) d = grad F(phi)`, with F the proximal
  objective and H the inner loss's Hessian at phi, by `cg_steps` iterations of
  truncated CG (stopping at a direction of non-positive curvature, so d is a
  descent direction), then takes the largest step `t d`, t in
  `1, 1/2, ..., 2^-(backtracks-1)`, that decreases F by Armijo's rule
  (`F(phi - t d) <= F(phi) - 1e-4 t <grad F, d>`; no step when none does).
  The proximal term makes `H + lam I` positive definite wherever
  `lam > -lambda_min(H)`, and on a loss that is quadratic in phi one step
  with enough CG iterations is the exact minimiser.

  Attributes:
    cg_steps: CG iterations per Newton step, >= 1 (the system has as many
      unknowns as phi, but its distinct eigenvalues are few when the support
      set is small: H has rank at most the number of support outputs for a
      squared loss near a fit).
    backtracks: step sizes tried per Newton step, >= 1.

  References: Nocedal, Wright. Numerical Optimization, 2nd ed., 2006,
  Algorithm 7.1 (line-search Newton-CG) and Sec. 3.1 (Armijo backtracking).
  """

  cg_steps: int = 10
  backtracks: int = 10


def newton_solve(
  loss_fn: LossFn, theta: Params, *, lam: float, num_steps: int, newton: Newton
) -> Params:
  """`num_steps` damped Newton steps (`Newton`) on the proximal problem, started at theta.

  Args:
    loss_fn: `phi -> scalar`, the inner (support) loss.
    theta: the proximal centre and the starting point.
    lam: proximal weight, > 0.
    num_steps: Newton steps, a static int >= 0 (a `lax.scan`).
    newton: the step's settings.

  Returns:
    phi, shaped like theta.
  """
  check_steps(num_steps)
  if newton.cg_steps < 1 or newton.backtracks < 1:
    raise ValueError(f"Newton needs cg_steps >= 1 and backtracks >= 1, got {newton}")
  objective = proximal_loss(loss_fn, theta, lam)
  sizes = 0.5 ** jnp.arange(newton.backtracks)

  def step(phi, _):
    grad_inner, matvec = implicit_system(loss_fn, phi, lam)  # v -> (I + H / lam) v
    g = jax.tree_util.tree_map(lambda a, p, t: a + lam * (p - t), grad_inner, phi, theta)
    rhs = jax.tree_util.tree_map(lambda a: a / lam, g)
    d, _ = cg.conjugate_gradient(matvec, rhs, num_steps=newton.cg_steps)  # (H + lam I) d = g
    slope = optax.tree_utils.tree_vdot(g, d)
    moved = lambda t: jax.tree_util.tree_map(lambda p, v: p - (t * v).astype(p.dtype), phi, d)
    values = jax.vmap(lambda t: objective(moved(t)))(sizes)
    accepted = values <= objective(phi) - 1e-4 * sizes * slope
    t = jnp.where(jnp.any(accepted) & (slope > 0), sizes[jnp.argmax(accepted)], 0.0)
    return moved(t), None

  phi, _ = jax.lax.scan(step, theta, None, length=num_steps)
  return phi


def proximal_solve(
  loss_fn: LossFn,
  theta: Params,
  *,
  lam: float,
  num_steps: int,
  optimizer: optax.GradientTransformation | Newton,
  remat: bool = False,
) -> Params:
  """`num_steps` steps of `optimizer` (or of `Newton`) on the proximal problem, started at theta.

  Plain autodiff: `jax.grad` through the result differentiates the unrolled
  inner loop (what `implicit_solve` avoids), which is what the tests compare
  the implicit gradient against.

  Args:
    loss_fn: `phi -> scalar`, the inner (support) loss.
    theta: the meta-parameters, the proximal centre and the starting point.
    lam: proximal weight, > 0.
    num_steps: K, a static int >= 0.
    optimizer: the inner optimizer (e.g. `inner.sgd(lr)` or `optax.adam(lr)`),
      or `Newton(...)` for damped Newton-CG steps.
    remat: as in `gradient_descent` (optax optimizers only).

  Returns:
    phi_K, shaped like theta.
  """
  if isinstance(optimizer, Newton):
    return newton_solve(loss_fn, theta, lam=lam, num_steps=num_steps, newton=optimizer)
  phi, _, _ = gradient_descent(
    proximal_loss(loss_fn, theta, lam),
    theta,
    num_steps=num_steps,
    optimizer=optimizer,
    remat=remat,
  )
  return phi


def implicit_system(loss_fn: LossFn, phi: Params, lam: float) -> tuple[Params, cg.Matvec]:
  """The gradient of `loss_fn` at phi and the product `v -> (I + H / lam) v`.

  `H v` is forward-over-reverse (`jax.linearize` of `jax.grad`): the gradient
  computation is linearised once and each product costs about one more
  gradient; no Hessian is formed. Networks with layers that define only
  reverse-mode derivatives (`jax.custom_vjp`, such as the convolution of
  `metalearn.models.Conv4`) cannot be differentiated forward; for them the
  product is reverse-over-reverse (`jax.vjp` of `jax.grad`, using H = H^T),
  the same numbers at a somewhat larger memory cost, still independent of the
  number of inner steps.

  Args:
    loss_fn: `phi -> scalar`, the inner loss (without the proximal term).
    phi: the point, usually the inner solution phi*.
    lam: proximal weight, > 0.

  Returns:
    `(grad loss_fn(phi), matvec)`.
  """
  if _jaxpr.uses_primitive(loss_fn, (phi,), ("custom_vjp",)):
    grad, vjp = jax.vjp(jax.grad(loss_fn), phi)

    def hvp(v):
      return vjp(v)[0]

  else:
    grad, hvp = jax.linearize(jax.grad(loss_fn), phi)

  def matvec(v):
    return jax.tree_util.tree_map(lambda a, h: a + h / lam, v, hvp(v))

  return grad, matvec


def implicit_gradient(
  loss_fn: LossFn, phi: Params, g: Params, *, lam: float, solver: Solver
) -> cg.SolveResult:
  """Solves `(I + H / lam) u = g` with H the Hessian of `loss_fn` at phi.

  Args:
    loss_fn: `phi -> scalar`, the inner loss.
    phi: the inner solution phi*.
    g: `grad L_q(phi*)`, shaped like phi.
    lam: proximal weight, > 0.
    solver: from `make_solver`.

  Returns:
    `SolveResult(u, residual_norm)`; u is the meta-gradient with respect to theta.
  """
  return solver(implicit_system(loss_fn, phi, lam)[1], g)


def _is_primal(a) -> bool:
  return isinstance(a, CustomVJPPrimal)


def _value(x: PyTree) -> PyTree:
  """The values of a PyTree of `custom_vjp` primals (`symbolic_zeros=True` wraps them)."""
  return jax.tree_util.tree_map(lambda a: a.value, x, is_leaf=_is_primal)


def _perturbed(x: PyTree) -> bool:
  """Whether any leaf of a PyTree of `custom_vjp` primals is being differentiated."""
  return any(a.perturbed for a in jax.tree_util.tree_leaves(x, is_leaf=_is_primal))


def _instantiate(ct: PyTree, like: PyTree) -> PyTree:
  """Replaces symbolic-zero cotangent leaves by zeros shaped like `like`."""
  is_zero = lambda a: isinstance(a, SymbolicZero)
  return jax.tree_util.tree_map(
    lambda c, p: jnp.zeros_like(p) if is_zero(c) else c, ct, like, is_leaf=is_zero
  )


def _inner_data_cotangent(inner_loss: InnerLoss, phi: Params, data: PyTree, w: Params) -> PyTree:
  """`-(d grad_phi L_s(phi, data) / d data)^T w`, the data part of the implicit VJP."""
  _, vjp = jax.vjp(lambda d: jax.grad(inner_loss)(phi, d), data)
  (ct,) = vjp(jax.tree_util.tree_map(jnp.negative, w))
  return ct


def _check_common(lam: float, num_steps: int, lam_damping: float) -> tuple[float, float]:
  """`(lam, lam + lam_damping)`: the proximal weight and the one the linear system uses."""
  check_steps(num_steps)
  lam = check_lam(lam)
  if not float(lam_damping) >= 0:
    raise ValueError(f"lam_damping must be >= 0, got {lam_damping}")
  return lam, lam + float(lam_damping)


def implicit_solve(
  inner_loss: InnerLoss,
  *,
  lam: float,
  num_steps: int,
  optimizer: optax.GradientTransformation | Newton,
  solver: str | Solver = "cg",
  cg_steps: int = 5,
  damping: float = 0.0,
  lam_damping: float = 0.0,
) -> Callable[[Params, PyTree], Params]:
  """`(theta, data) -> phi*`, differentiated by the implicit function theorem.

  The forward pass is `proximal_solve`; the backward pass maps a cotangent
  `phi_bar [like theta]` to `theta_bar = (I + H / lam)^-1 phi_bar`, one linear
  solve at phi*, and stores nothing of the inner loop.

  Args:
    inner_loss: `(phi, data) -> scalar`, e.g. the support loss with `data` the
      support split.
    lam: proximal weight, > 0.
    num_steps: K, inner optimizer steps (static int >= 0).
    optimizer: the inner optimizer, or `Newton(...)` (damped Newton-CG steps).
    solver: `"cg"`, `"neumann"` or a `Solver` (see `make_solver`).
    cg_steps: iterations of the named solver (CG iterations or Neumann terms), >= 1;
      the same knob as `imaml(..., cg_steps)`.
    damping: `>= 0`, see `make_solver`.
    lam_damping: `>= 0`, added to lam in the linear system only (see
      `implicit_meta_loss`).

  Returns:
    A pure function, ready for `jit` and `vmap`. The residual of the backward
    solve is not observable from it; use `implicit_meta_loss` to report it.
  """
  lam, sys_lam = _check_common(lam, num_steps, lam_damping)
  solve = make_solver(solver, cg_steps=cg_steps, damping=damping)

  def forward(theta, data):
    loss = lambda phi: inner_loss(phi, data)
    return proximal_solve(loss, theta, lam=lam, num_steps=num_steps, optimizer=optimizer)

  @jax.custom_vjp
  def fn(theta, data):
    return forward(theta, data)

  def fwd(theta, data):
    theta, data, data_perturbed = _value(theta), _value(data), _perturbed(data)
    phi = forward(theta, data)
    return phi, (phi, data, data_perturbed)

  def bwd(res, phi_bar):
    phi, data, data_perturbed = res
    phi_bar = _instantiate(phi_bar, phi)
    inner = lambda p: inner_loss(p, data)
    u, _ = implicit_gradient(inner, phi, phi_bar, lam=sys_lam, solver=solve)
    data_bar = None
    if data_perturbed:
      w = jax.tree_util.tree_map(lambda a: a / sys_lam, u)
      data_bar = _inner_data_cotangent(inner_loss, phi, data, w)
    return u, data_bar

  fn.defvjp(fwd, bwd, symbolic_zeros=True)
  return fn


def implicit_meta_loss(
  inner_loss: InnerLoss,
  outer_loss: OuterLoss,
  *,
  lam: float,
  num_steps: int,
  optimizer: optax.GradientTransformation | Newton,
  solver: str | Solver = "cg",
  cg_steps: int = 5,
  damping: float = 0.0,
  lam_damping: float = 0.0,
) -> Callable[[Params, PyTree, PyTree], tuple[jax.Array, Metrics]]:
  """`(theta, inner_data, outer_data) -> (L_q(phi*), aux)` with the implicit gradient.

  The forward pass solves the inner problem, takes `grad L_q(phi*)` and solves
  `(I + H / lam) u = grad L_q(phi*)`; the backward pass is `theta_bar =
  loss_bar * u`. The solve is done in the forward pass even when no gradient
  is taken, so the reported metrics do not depend on whether one is.

  Args:
    inner_loss: `(phi, data) -> scalar`, the support loss.
    outer_loss: `(phi, data) -> (scalar, aux)`, the query loss and metrics.
    lam: proximal weight, > 0.
    num_steps: K, inner optimizer steps (static int >= 0).
    optimizer: the inner optimizer, or `Newton(...)` (damped Newton-CG steps).
    solver: `"cg"`, `"neumann"` or a `Solver` (see `make_solver`).
    cg_steps: iterations of the named solver (CG iterations or Neumann terms), >= 1;
      the same knob as `imaml(..., cg_steps)`.
    damping: `>= 0`, see `make_solver`.
    lam_damping: `>= 0`, added to lam in the linear system only: it solves
      `((1 + damping) I + H / (lam + lam_damping)) u = g`, which shrinks the
      curvature term where H at an inexact phi is large or indefinite. The
      authors' released Omniglot code uses damping 1 and lam_damping 10 with
      lam 2 (a heuristic, not in the paper; the gradient is then not the
      exact implicit gradient even at a solved inner problem).

  Returns:
    A pure function whose aux is the outer loss's aux plus
    `cg_residual` (`[]`, the norm of the linear solver's final residual,
    whichever solver) and `inner_grad_norm` (`[]`, the norm of the proximal
    objective's gradient at the returned phi: 0 at an exact minimiser). Aux
    outputs carry no gradient.
  """
  lam, sys_lam = _check_common(lam, num_steps, lam_damping)
  solve = make_solver(solver, cg_steps=cg_steps, damping=damping)

  def forward(theta, inner_data, outer_data):
    inner = lambda p: inner_loss(p, inner_data)
    phi = proximal_solve(inner, theta, lam=lam, num_steps=num_steps, optimizer=optimizer)
    (loss, aux), g = jax.value_and_grad(outer_loss, has_aux=True)(phi, outer_data)
    grad_inner, matvec = implicit_system(inner, phi, sys_lam)
    u, residual = solve(matvec, g)
    prox_grad = jax.tree_util.tree_map(lambda a, p, t: a + lam * (p - t), grad_inner, phi, theta)
    aux = {**aux, "cg_residual": residual, "inner_grad_norm": optax.global_norm(prox_grad)}
    return (loss, aux), (phi, u)

  @jax.custom_vjp
  def fn(theta, inner_data, outer_data):
    return forward(theta, inner_data, outer_data)[0]

  def fwd(theta, inner_data, outer_data):
    inner_p, outer_p = _perturbed(inner_data), _perturbed(outer_data)
    theta, inner_data, outer_data = _value(theta), _value(inner_data), _value(outer_data)
    out, (phi, u) = forward(theta, inner_data, outer_data)
    return out, (phi, u, inner_data, outer_data, inner_p, outer_p)

  def bwd(res, cts):
    phi, u, inner_data, outer_data, inner_p, outer_p = res
    loss_bar = cts[0]
    if isinstance(loss_bar, SymbolicZero):
      return None, None, None
    theta_bar = jax.tree_util.tree_map(lambda a: (loss_bar * a).astype(a.dtype), u)
    inner_bar = outer_bar = None
    if inner_p:
      w = jax.tree_util.tree_map(lambda a: a / sys_lam, theta_bar)
      inner_bar = _inner_data_cotangent(inner_loss, phi, inner_data, w)
    if outer_p:
      _, vjp = jax.vjp(lambda d: outer_loss(phi, d)[0], outer_data)
      (outer_bar,) = vjp(loss_bar)
    return theta_bar, inner_bar, outer_bar

  fn.defvjp(fwd, bwd, symbolic_zeros=True)
  return fn
