"""Tests of the proximal inner problem and its implicit meta-gradient (iMAML)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn import episodes as ep
from metalearn.inner import cg, implicit


def x64():
  """float64 inside a `with` block (jax.experimental.enable_x64 where it still exists)."""
  enable = getattr(jax.experimental, "enable_x64", None)
  return enable() if enable is not None else jax.enable_x64(True)


def rel_err(a, b) -> float:
  a, b = np.concatenate([np.ravel(x) for x in a]), np.concatenate([np.ravel(x) for x in b])
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


# --- Ridge regression: a linear model under squared loss, solvable in closed form. ---


def linear(phi, x):
  return x @ phi["w"] + phi["b"]


def ridge_inner(phi, split):
  return ep.mse(linear(phi, split.x), split)


def ridge_outer(phi, split):
  return ep.mse(linear(phi, split.x), split), {}


def ridge_problem(seed: int, d: int = 4, n: int = 10, pad: int = 3, m: int = 12):
  """Support with `pad` masked garbage rows, query, and theta, all float64 numpy."""
  rng = np.random.default_rng(seed)
  xs = rng.normal(size=(n + pad, d))
  ys = rng.normal(size=(n + pad, 1))
  xs[n:], ys[n:] = 1e3, -1e3  # padding: large values that would dominate if not masked
  mask = np.arange(n + pad) < n
  xq, yq = rng.normal(size=(m, d)), rng.normal(size=(m, 1))
  theta = {"w": rng.normal(size=(d, 1)), "b": rng.normal(size=(1,))}
  return ep.Split(xs, ys, mask), ep.Split(xq, yq, np.ones(m, bool)), theta


def ridge_closed_form(support, query, theta, lam):
  """phi*, L_q(phi*) and the exact d L_q(phi*(theta)) / d theta, in numpy float64.

  With A = [X 1] over the real support rows, L_s(v) = |A v - y|^2 / n has
  gradient 2 A'(A v - y) / n and Hessian H = 2 A'A / n, so
  phi* = (H + lam I)^-1 (2 A'y / n + lam theta) and dphi*/dtheta = lam (H + lam I)^-1.
  """
  x, y = support.x[support.mask], support.y[support.mask]
  a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  n, k = a.shape
  h = 2 * a.T @ a / n
  t = np.concatenate([theta["w"][:, 0], theta["b"]])
  phi = np.linalg.solve(h + lam * np.eye(k), 2 * a.T @ y[:, 0] / n + lam * t)
  aq = np.concatenate([query.x, np.ones((len(query.x), 1))], axis=1)
  resid = aq @ phi - query.y[:, 0]
  loss = np.mean(resid**2)
  g_q = 2 * aq.T @ resid / len(aq)
  grad = lam * np.linalg.solve(h + lam * np.eye(k), g_q)
  return phi, loss, grad, np.linalg.eigvalsh(h).max()


def flat(tree):
  return np.concatenate([np.ravel(tree["w"]), np.ravel(tree["b"])])


@pytest.mark.parametrize("lam", [0.3, 1.0, 10.0])
def test_ridge_implicit_gradient_equals_closed_form(lam):
  support, query, theta = ridge_problem(seed=0)
  phi_np, loss_np, grad_np, top_eig = ridge_closed_form(support, query, theta, lam)
  # Inner problem solved to convergence: GD with step 1 / (L + lam) contracts the
  # error by at most 1 - lam / (L + lam) per step; 2000 steps reach round-off for these lam.
  settings = dict(lam=lam, num_steps=2000, optimizer=optax.sgd(1.0 / (top_eig + lam)), cg_steps=10)
  with x64():
    support, query, theta = jax.tree_util.tree_map(jnp.asarray, (support, query, theta))
    meta_loss = implicit.implicit_meta_loss(ridge_inner, ridge_outer, **settings)
    value_grad = jax.jit(jax.value_and_grad(meta_loss, has_aux=True))
    (loss, aux), grad = value_grad(theta, support, query)
    solve = implicit.implicit_solve(ridge_inner, **settings)
    phi = jax.jit(solve)(theta, support)
    grad_adapt = jax.jit(jax.grad(lambda t: ridge_outer(solve(t, support), query)[0]))(theta)
  assert grad["w"].dtype == jnp.float64
  np.testing.assert_allclose(flat(phi), phi_np, rtol=1e-9)
  np.testing.assert_allclose(float(loss), loss_np, rtol=1e-9)
  assert rel_err([flat(grad)], [grad_np]) < 1e-5
  assert rel_err([flat(grad_adapt)], [grad_np]) < 1e-5
  assert float(aux["inner_grad_norm"]) < 1e-9
  assert float(aux["cg_residual"]) < 1e-9

  # Independent of the formula above: central finite differences of the closed form.
  def closed_loss(t):
    w, b = t[:-1, None], t[-1:]
    return ridge_closed_form(support_np, query_np, {"w": w, "b": b}, lam)[1]

  support_np, query_np, theta_np = ridge_problem(seed=0)
  t0, eps = flat(theta_np), 1e-6
  fd = np.array(
    [(closed_loss(t0 + eps * e) - closed_loss(t0 - eps * e)) / (2 * eps) for e in np.eye(t0.size)]
  )
  assert rel_err([flat(grad)], [fd]) < 1e-6


@pytest.mark.parametrize(("damping", "lam_damping"), [(0.0, 10.0), (1.0, 10.0), (0.5, 0.0)])
def test_ridge_damped_system_equals_its_closed_form(damping, lam_damping):
  """The gradient solves `((1 + damping) I + H / (lam + lam_damping)) u = g_q` at phi*."""
  lam = 2.0
  support, query, theta = ridge_problem(seed=3)
  phi_np, _, _, top_eig = ridge_closed_form(support, query, theta, lam)
  x = support.x[support.mask]
  a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  h = 2 * a.T @ a / len(a)
  aq = np.concatenate([query.x, np.ones((len(query.x), 1))], axis=1)
  g_q = 2 * aq.T @ (aq @ phi_np - query.y[:, 0]) / len(aq)
  system = (1 + damping) * np.eye(len(h)) + h / (lam + lam_damping)
  expected = np.linalg.solve(system, g_q)
  settings = dict(
    lam=lam,
    num_steps=2000,
    optimizer=optax.sgd(1.0 / (top_eig + lam)),
    cg_steps=10,
    damping=damping,
    lam_damping=lam_damping,
  )
  with x64():
    support, query, theta = jax.tree_util.tree_map(jnp.asarray, (support, query, theta))
    meta_loss = implicit.implicit_meta_loss(ridge_inner, ridge_outer, **settings)
    grad = jax.jit(jax.grad(lambda t: meta_loss(t, support, query)[0]))(theta)
    solve = implicit.implicit_solve(ridge_inner, **settings)
    grad_adapt = jax.jit(jax.grad(lambda t: ridge_outer(solve(t, support), query)[0]))(theta)
  assert rel_err([flat(grad)], [expected]) < 1e-6
  assert rel_err([flat(grad_adapt)], [expected]) < 1e-6
  # The damped solution is not the exact implicit gradient (unless both are 0).
  exact = np.linalg.solve(np.eye(len(h)) + h / lam, g_q)
  assert rel_err([expected], [exact]) > 1e-2


def test_ridge_neumann_converges_to_cg_answer():
  # lam = 20 > largest Hessian eigenvalue: ||H / lam|| < 1, the series converges.
  support, query, theta = ridge_problem(seed=1)
  _, _, grad_np, top_eig = ridge_closed_form(support, query, theta, lam=20.0)
  assert top_eig < 20.0
  with x64():
    support, query, theta = jax.tree_util.tree_map(jnp.asarray, (support, query, theta))
    settings = dict(lam=20.0, num_steps=500, optimizer=optax.sgd(1.0 / (top_eig + 20.0)))
    fn = implicit.implicit_meta_loss(ridge_inner, ridge_outer, **settings)
    cg_grad = jax.jit(jax.grad(lambda t: fn(t, support, query)[0]))(theta)
    errors, residuals = [], []
    for terms in (1, 2, 4, 8, 16):
      fn = implicit.implicit_meta_loss(
        ridge_inner, ridge_outer, solver="neumann", cg_steps=terms, **settings
      )
      (_, aux), g = jax.jit(jax.value_and_grad(fn, has_aux=True))(theta, support, query)
      errors.append(rel_err(leaves(g), leaves(cg_grad)))
      residuals.append(float(aux["cg_residual"]))
  assert rel_err([flat(cg_grad)], [grad_np]) < 1e-8
  assert errors[0] > 1e-3  # one term (g itself) is a poor approximation here
  # The error shrinks by at least top_eig / lam per term until it reaches round-off.
  for e1, e2 in itertools.pairwise(errors):
    assert e2 < e1 or e2 < 1e-13
  assert all(r2 < r1 for r1, r2 in itertools.pairwise(residuals))
  assert errors[-1] < 1e-10


# --- A nonlinear inner problem: implicit gradient vs. differentiating the unrolled solver. ---


def tanh_net(phi, x):
  return jnp.tanh(x @ phi["w1"] + phi["b1"]) @ phi["w2"] + phi["b2"]


def net_inner(phi, split):
  return ep.mse(tanh_net(phi, split.x), split)


def net_outer(phi, split):
  loss = ep.mse(tanh_net(phi, split.x), split)
  return loss, {"query_mse": loss}


def net_problem(seed: int, num_tasks: int | None = None):
  rng = np.random.default_rng(seed)
  lead = () if num_tasks is None else (num_tasks,)

  def split(n):
    x = rng.uniform(-2, 2, size=(*lead, n, 2))
    return ep.Split(x, np.sin(x.sum(-1, keepdims=True)), np.ones((*lead, n), bool))

  theta = {
    "w1": rng.normal(size=(2, 6)) / np.sqrt(2),
    "b1": np.zeros(6),
    "w2": rng.normal(size=(6, 1)) / np.sqrt(6),
    "b2": np.zeros(1),
  }
  return split(8), split(10), theta


def test_implicit_gradient_matches_unrolled_at_convergence():
  support, query, theta = net_problem(seed=2)
  lam, steps, lr = 1.0, 1500, 0.1
  settings = dict(lam=lam, num_steps=steps, optimizer=optax.sgd(lr))
  with x64():
    support, query, theta = jax.tree_util.tree_map(jnp.asarray, (support, query, theta))

    def unrolled(t, s, q):
      phi = implicit.proximal_solve(lambda p: net_inner(p, s), t, **settings)
      return net_outer(phi, q)[0]

    meta_loss = implicit.implicit_meta_loss(net_inner, net_outer, cg_steps=40, **settings)
    solve = implicit.implicit_solve(net_inner, cg_steps=40, **settings)
    # Gradients with respect to theta and both data arguments (support.x, query.x).
    grad = lambda f, **kw: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), allow_int=True, **kw))
    loss_unrolled, g_unrolled = grad(unrolled)(theta, support, query)
    (loss, aux), g_implicit = grad(meta_loss, has_aux=True)(theta, support, query)
    _, g_adapt = grad(lambda t, s, q: net_outer(solve(t, s), q)[0])(theta, support, query)
  np.testing.assert_allclose(float(loss), float(loss_unrolled), rtol=1e-12)
  assert float(aux["inner_grad_norm"]) < 1e-10
  assert float(aux["cg_residual"]) < 1e-10
  assert rel_err(leaves(g_implicit[0]), leaves(g_unrolled[0])) < 1e-6
  assert rel_err(leaves(g_adapt[0]), leaves(g_unrolled[0])) < 1e-6
  # Data gradients (inner data through the implicit function theorem, outer data directly).
  for i in (1, 2):
    assert rel_err([g_implicit[i].x], [g_unrolled[i].x]) < 1e-6
  assert rel_err([g_adapt[1].x], [g_unrolled[1].x]) < 1e-6
  assert np.linalg.norm(g_unrolled[1].x) > 1e-3  # the data gradients compared are not trivial


def test_implicit_differs_from_unrolled_before_convergence():
  # With 3 inner steps phi is far from phi*: the implicit gradient is then an
  # approximation, and the inner gradient norm reported says so.
  support, query, theta = net_problem(seed=3)
  settings = dict(lam=1.0, num_steps=3, optimizer=optax.sgd(0.1))
  with x64():
    support, query, theta = jax.tree_util.tree_map(jnp.asarray, (support, query, theta))
    inner = lambda p: net_inner(p, support)

    def unrolled(t):
      phi = implicit.proximal_solve(inner, t, **settings)
      return net_outer(phi, query)[0], phi

    meta_loss = implicit.implicit_meta_loss(net_inner, net_outer, cg_steps=40, **settings)
    (_, aux), g = jax.jit(jax.value_and_grad(meta_loss, has_aux=True))(theta, support, query)
    (_, phi), g_unrolled = jax.jit(jax.value_and_grad(unrolled, has_aux=True))(theta)
    # The reported inner gradient norm is that of the proximal objective at phi_3.
    prox_grad_norm = optax.global_norm(jax.grad(implicit.proximal_loss(inner, theta, 1.0))(phi))
  assert rel_err(leaves(g), leaves(g_unrolled)) > 1e-3
  assert float(aux["inner_grad_norm"]) > 1e-3
  np.testing.assert_allclose(float(aux["inner_grad_norm"]), float(prox_grad_norm), rtol=1e-10)


def f32(tree):
  return jax.tree_util.tree_map(
    lambda a: jnp.asarray(a, jnp.float32) if np.asarray(a).dtype == np.float64 else jnp.asarray(a),
    tree,
  )


def test_vmap_over_tasks_equals_loop():
  support, query, theta = f32(net_problem(seed=5, num_tasks=2))  # theta has no task axis
  fn = implicit.implicit_meta_loss(
    net_inner, net_outer, lam=2.0, num_steps=20, optimizer=optax.sgd(0.1)
  )
  value_grad = jax.value_and_grad(fn, has_aux=True)
  batched = jax.jit(jax.vmap(value_grad, in_axes=(None, 0, 0)))(theta, support, query)
  jitted = jax.jit(value_grad)
  for i in range(2):
    task = lambda a, i=i: a[i]
    args = theta, jax.tree_util.tree_map(task, support), jax.tree_util.tree_map(task, query)
    one = jitted(*args)
    for a, b in zip(leaves(jax.tree_util.tree_map(task, batched)), leaves(one), strict=True):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_solver_breakdown_gives_nonfinite_residual_and_gradient():
  # A loss whose value and gradient are finite but whose Hessian-vector products are NaN.
  @jax.custom_jvp
  def bad_grad(x):
    return x

  bad_grad.defjvp(lambda primals, tangents: (bad_grad(primals[0]), tangents[0] * jnp.nan))

  @jax.custom_jvp
  def smooth(x):
    return 0.5 * x**2

  smooth.defjvp(lambda primals, tangents: (smooth(primals[0]), bad_grad(primals[0]) * tangents[0]))

  def inner(phi, data):
    return jnp.sum(smooth(phi["w"] - data))

  def outer(phi, data):
    return jnp.sum((phi["w"] - 2 * data) ** 2), {}

  theta, data = {"w": jnp.ones(3)}, jnp.arange(3.0)
  fn = implicit.implicit_meta_loss(inner, outer, lam=1.0, num_steps=5, optimizer=optax.sgd(0.1))
  assert np.isfinite(float(inner(theta, data)))
  (loss, aux), g = jax.value_and_grad(fn, has_aux=True)(theta, data, data)
  assert np.isfinite(float(loss))
  assert not np.isfinite(float(aux["cg_residual"]))
  assert not np.all(np.isfinite(g["w"]))


def test_bad_arguments_raise():
  sgd = optax.sgd(0.1)
  for lam in (0.0, -1.0):
    with pytest.raises(ValueError, match="lam"):
      implicit.implicit_meta_loss(net_inner, net_outer, lam=lam, num_steps=1, optimizer=sgd)
    with pytest.raises(ValueError, match="lam"):
      implicit.implicit_solve(net_inner, lam=lam, num_steps=1, optimizer=sgd)
  with pytest.raises(ValueError, match="lam_damping"):
    implicit.implicit_solve(net_inner, lam=1.0, num_steps=1, optimizer=sgd, lam_damping=-1.0)
  with pytest.raises(ValueError, match="cg_steps"):
    implicit.make_solver("cg", cg_steps=0)
  with pytest.raises(ValueError, match="damping"):
    implicit.make_solver("neumann", cg_steps=3, damping=-1.0)
  with pytest.raises(ValueError, match="solver"):
    implicit.make_solver("lu")
  with pytest.raises(ValueError, match="inner_steps"):
    implicit.implicit_solve(net_inner, lam=1.0, num_steps=-1, optimizer=sgd)
  custom = lambda matvec, b: cg.SolveResult(b, jnp.zeros([]))
  assert implicit.make_solver(custom) is custom


# --- The Newton inner solver reaches the proximal minimiser the implicit gradient assumes. ---


@pytest.mark.parametrize("lam", [0.3, 10.0])
def test_newton_inner_solver_reaches_ridge_minimiser_and_exact_gradient(lam):
  # The ridge proximal problem is quadratic: one Newton step with as many CG iterations as
  # unknowns is its exact minimiser, and the implicit gradient is then the closed form.
  support, query, theta = ridge_problem(seed=5)
  phi_star, loss_star, grad_star, _ = ridge_closed_form(support, query, theta, lam)
  newton = implicit.Newton(cg_steps=5)
  with x64():
    support, query, theta = jax.tree_util.tree_map(jnp.asarray, (support, query, theta))
    phi = implicit.proximal_solve(
      lambda p: ridge_inner(p, support), theta, lam=lam, num_steps=1, optimizer=newton
    )
    meta_loss = implicit.implicit_meta_loss(
      ridge_inner, ridge_outer, lam=lam, num_steps=1, optimizer=newton, cg_steps=5
    )
    (loss, aux), grad = jax.value_and_grad(meta_loss, has_aux=True)(theta, support, query)
  np.testing.assert_allclose(flat(phi), phi_star, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(float(loss), loss_star, rtol=1e-10)
  np.testing.assert_allclose(flat(grad), grad_star, rtol=1e-8, atol=1e-12)
  assert float(aux["inner_grad_norm"]) < 1e-10


def test_newton_inner_solver_converges_where_sgd_does_not():
  # On the tanh network, 8 Newton steps solve the proximal problem to round-off; SGD with the
  # same number of steps (at a stable rate) leaves a gradient many orders larger.
  support, query, theta = net_problem(seed=2)
  lam = 1.0
  with x64():
    support, query, theta = jax.tree_util.tree_map(jnp.asarray, (support, query, theta))

    def inner_grad_norm(optimizer):
      meta_loss = implicit.implicit_meta_loss(
        net_inner, net_outer, lam=lam, num_steps=8, optimizer=optimizer, cg_steps=40
      )
      return float(meta_loss(theta, support, query)[1]["inner_grad_norm"])

    newton = inner_grad_norm(implicit.Newton(cg_steps=40))
    sgd = inner_grad_norm(optax.sgd(0.1))
    start = inner_grad_norm(optax.sgd(1e-30))  # phi = theta
  assert newton < 1e-9 < 1e-3 * start
  assert sgd > 1e4 * newton


def test_newton_inner_solver_never_increases_the_proximal_objective():
  # The line search accepts a step only when it lowers F (Armijo), so F(phi_k) is monotone,
  # also on the ReLU MLP of the sinusoid experiments, whose Hessian is indefinite.
  from metalearn.data.sinusoid import Sinusoid
  from metalearn.models import MLP

  model = MLP()
  task = Sinusoid(10, 10).sample(np.random.default_rng(0), 1)
  x, y = task.support.x[0], task.support.y[0]
  theta = model.init(jax.random.PRNGKey(0), x)
  loss = lambda p: jnp.mean(jnp.square(model.apply(p, x) - y))
  objective = implicit.proximal_loss(loss, theta, 1.0)
  newton = implicit.Newton(cg_steps=10)
  solve = lambda k: implicit.proximal_solve(loss, theta, lam=1.0, num_steps=k, optimizer=newton)
  values = np.array([float(objective(solve(k))) for k in range(6)])  # F(phi_0 = theta), ...
  assert np.all(np.diff(values) <= 1e-6 * values[0])
  assert values[-1] < values[0]  # and it moves


def test_newton_bad_arguments_raise():
  with pytest.raises(ValueError, match="cg_steps"):
    implicit.proximal_solve(
      lambda p: jnp.sum(p["w"] ** 2),
      {"w": jnp.ones(2)},
      lam=1.0,
      num_steps=1,
      optimizer=implicit.Newton(cg_steps=0),
    )
