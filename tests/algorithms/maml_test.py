"""Exact tests of the MAML family against closed forms and hand-written inner loops.

Everything here runs in float64 (the `x64` fixture), so the tolerances are tight.
The mse objective is the masked mean over rows of the sum over output dims of the
squared error: for a linear model `y = x @ w` on rows X (real rows only),

  L(w) = |X w - Y|_F^2 / n,   grad L(w) = (2 / n) X^T (X w - Y),   H = (2 / n) X^T X,

where H acts on w from the left (`H @ V`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn import algorithms, evaluation, inner
from metalearn import episodes as ep
from metalearn.inner.learned import curvature_transform
from metalearn.models import MLP, Model, as_model

pytestmark = pytest.mark.usefixtures("x64")

D_IN, D_OUT = 3, 2
RTOL = 1e-9


def _close(a, b, rtol=RTOL, atol=1e-12):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def _linear_model():
  return Model(
    init=lambda key, x: {"w": jax.random.normal(key, (x.shape[-1], D_OUT), dtype=x.dtype)},
    apply=lambda params, x: x @ params["w"],
  )


def _linear_episode(seed=0, n_s=6, n_q=7):
  """A linear-regression task with a few masked-out (garbage) rows in each split."""
  rng = np.random.default_rng(seed)

  def split(n, masked):
    x = rng.normal(size=(n, D_IN))
    y = rng.normal(size=(n, D_OUT))
    mask = np.ones(n, bool)
    mask[masked] = False
    x[masked] *= 100.0  # garbage that must be ignored
    return ep.Split(x, y, mask)

  return ep.Episode(split(n_s, [1, 4]), split(n_q, [0]))


def _real(split):
  return split.x[split.mask], split.y[split.mask]


def _np_grad(w, split):
  x, y = _real(split)
  return 2.0 / len(x) * x.T @ (x @ w - y)


def _np_hessian(split):
  x, _ = _real(split)
  return 2.0 / len(x) * x.T @ x


def _np_loss(w, split):
  x, y = _real(split)
  return np.sum((x @ w - y) ** 2) / len(x)


# Each test traces everything it compares inside one `jit`: one compile per test is much
# cheaper than running the inner `scan`s eagerly (each eager scan, and its derivative,
# compiles on its own). No fast code is needed: LLVM -O0.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _vg(learner, theta, episode):
  """`(meta_loss, jax.grad(meta_loss))` of one task; call inside `_jit`."""
  return jax.value_and_grad(lambda t: learner.meta_loss(t, episode, jax.random.key(0))[0])(theta)


def _adapt(learner, theta, support):
  """The adapted weights phi: what the predictor `adapt` returns holds."""
  (phi,) = learner.adapt(theta, support, jax.random.key(0)).args
  return phi


def _mlp_setup(seed=0, hidden=(8,)):
  """A small MLP with float64 weights and a float64 sinusoid-like episode."""
  rng = np.random.default_rng(seed)

  def split(n):
    x = rng.uniform(-5, 5, size=(n, 1))
    return ep.Split(x, 2.0 * np.sin(x - 0.5), np.ones(n, bool))

  episode = ep.Episode(split(6), split(6))
  model = as_model(MLP(hidden=hidden))
  params = jax.tree_util.tree_map(
    lambda a: a.astype(jnp.float64), model.init(jax.random.key(seed), episode.support.x)
  )
  return model, params, episode


# (1) One-step MAML on linear regression: the closed-form meta-gradient.


def test_one_step_maml_closed_form_meta_gradient():
  a = 0.05
  episode = _linear_episode()
  w = np.random.default_rng(1).normal(size=(D_IN, D_OUT))
  theta = {"params": {"w": jnp.asarray(w)}}

  w_adapted = w - a * _np_grad(w, episode.support)
  g_query = _np_grad(w_adapted, episode.query)
  hessian_term = a * _np_hessian(episode.support) @ g_query
  second_order = g_query - hessian_term  # (I - a H_s) grad L_q(w')
  first_order = g_query

  maml = algorithms.maml(_linear_model(), inner_lr=a, inner_steps=1)
  fomaml = algorithms.fomaml(_linear_model(), inner_lr=a, inner_steps=1)
  run = _jit(lambda t, e: (_vg(maml, t, e), _vg(fomaml, t, e), _adapt(maml, t, e.support)))
  (loss, grad), (fo_loss, fo_grad), phi = run(theta, episode)

  np.testing.assert_allclose(loss, _np_loss(w_adapted, episode.query), rtol=RTOL)
  np.testing.assert_allclose(fo_loss, loss, rtol=RTOL)
  np.testing.assert_allclose(grad["params"]["w"], second_order, rtol=RTOL)
  np.testing.assert_allclose(fo_grad["params"]["w"], first_order, rtol=RTOL)
  # The two differ exactly by the Hessian term, and it is not negligible here.
  diff = np.asarray(fo_grad["params"]["w"] - grad["params"]["w"])
  np.testing.assert_allclose(diff, hessian_term, rtol=1e-8)
  assert np.linalg.norm(hessian_term) > 0.05 * np.linalg.norm(g_query)

  # adapt() is the inner step.
  np.testing.assert_allclose(phi["w"], w_adapted, rtol=RTOL)


# (2) Meta-SGD with its step sizes at inner_lr is MAML.


def test_metasgd_at_inner_lr_equals_maml():
  model, params, episode = _mlp_setup()
  kwargs = dict(inner_lr=0.03, inner_steps=2)
  maml = algorithms.maml(model, **kwargs)
  metasgd = algorithms.metasgd(model, **kwargs)
  theta = metasgd.init(jax.random.key(0), episode)
  assert set(theta) == {"params", "lr"}
  assert jax.tree_util.tree_structure(theta["lr"]) == jax.tree_util.tree_structure(theta["params"])
  for lr, p in zip(*map(jax.tree_util.tree_leaves, (theta["lr"], theta["params"])), strict=True):
    assert lr.shape == p.shape and lr.dtype == p.dtype
    np.testing.assert_array_equal(lr, np.asarray(0.03, p.dtype))
  theta = {"params": params, "lr": jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.03), params)}

  run = _jit(lambda t, e: (_vg(metasgd, t, e), _vg(maml, {"params": t["params"]}, e)))
  (loss, grad), (maml_loss, maml_grad) = run(theta, episode)
  np.testing.assert_allclose(loss, maml_loss, rtol=RTOL)
  _close(grad["params"], maml_grad["params"])


def test_metasgd_step_size_gradient_closed_form():
  # One step: phi = w - lr * g_s, so d L_q(phi) / d lr = -g_s * grad L_q(phi), elementwise.
  episode = _linear_episode(seed=2)
  rng = np.random.default_rng(3)
  w, lr = rng.normal(size=(D_IN, D_OUT)), rng.uniform(0.01, 0.1, size=(D_IN, D_OUT))
  g_s = _np_grad(w, episode.support)
  g_q = _np_grad(w - lr * g_s, episode.query)
  learner = algorithms.metasgd(_linear_model(), inner_lr=0.05, inner_steps=1)
  theta = {"params": {"w": jnp.asarray(w)}, "lr": {"w": jnp.asarray(lr)}}
  loss, grad = _jit(functools.partial(_vg, learner))(theta, episode)
  np.testing.assert_allclose(loss, _np_loss(w - lr * g_s, episode.query), rtol=RTOL)
  np.testing.assert_allclose(grad["lr"]["w"], -g_s * g_q, rtol=RTOL)
  # d phi_ij / d w_kl = delta_ik delta_jl - lr_ij H_ik delta_jl, with H = H_s symmetric.
  want_w = g_q - _np_hessian(episode.support) @ (lr * g_q)
  np.testing.assert_allclose(grad["params"]["w"], want_w, rtol=RTOL)


# (3) Meta-Curvature.


def test_metacurvature_at_identity_equals_maml():
  model, params, episode = _mlp_setup(hidden=(4,))
  kwargs = dict(inner_lr=0.03, inner_steps=2)
  maml = algorithms.maml(model, **kwargs)
  mc = algorithms.metacurvature(model, **kwargs)
  theta = mc.init(jax.random.key(0), episode)
  assert set(theta) == {"params", "curvature"}
  kernel_mats = theta["curvature"]["head"]["kernel"]  # [4, 1]
  assert [m.shape for m in kernel_mats] == [(4, 4), (1, 1)]
  for m in kernel_mats:
    np.testing.assert_array_equal(m, np.eye(m.shape[0]))
  theta = {"params": params, "curvature": jax.tree_util.tree_map(np.asarray, theta["curvature"])}
  theta["curvature"] = jax.tree_util.tree_map(lambda m: m.astype(np.float64), theta["curvature"])

  run = _jit(lambda t, e: (_vg(mc, t, e), _vg(maml, {"params": t["params"]}, e)))
  (loss, grad), (maml_loss, maml_grad) = run(theta, episode)
  np.testing.assert_allclose(loss, maml_loss, rtol=RTOL)
  _close(grad["params"], maml_grad["params"])
  # The curvature matrices do get a meta-gradient.
  assert np.linalg.norm(grad["curvature"]["head"]["kernel"][0]) > 0


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4, 5)])
def test_curvature_transform_is_a_mode_product(shape):
  rng = np.random.default_rng(len(shape))
  g = rng.normal(size=shape)
  if len(shape) == 1:
    (m,) = mats = [rng.normal(size=(5, 5))]
    want = m @ g
  elif len(shape) == 2:
    m1, m2 = mats = [rng.normal(size=(3, 3)), rng.normal(size=(4, 4))]
    want = m1 @ g @ m2.T  # (G x_1 M_1 x_2 M_2)_ij = sum_kl M1_ik M2_jl G_kl
  else:
    # A conv kernel [kh, kw, in, out] is viewed as [kh * kw, in, out].
    mats = [rng.normal(size=(d, d)) for d in (6, 4, 5)]
    want = np.einsum("ai,bj,ck,ijk->abc", *mats, g.reshape(6, 4, 5)).reshape(shape)
  got = curvature_transform(jnp.asarray(g), [jnp.asarray(m) for m in mats])
  assert got.shape == shape
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_metacurvature_one_step_closed_form():
  a = 0.05
  episode = _linear_episode(seed=4)
  rng = np.random.default_rng(5)
  w = rng.normal(size=(D_IN, D_OUT))
  m1 = np.eye(D_IN) + 0.3 * rng.normal(size=(D_IN, D_IN))
  m2 = np.eye(D_OUT) + 0.3 * rng.normal(size=(D_OUT, D_OUT))
  phi = w - a * m1 @ _np_grad(w, episode.support) @ m2.T
  learner = algorithms.metacurvature(_linear_model(), inner_lr=a, inner_steps=1)
  theta = {"params": {"w": jnp.asarray(w)}, "curvature": {"w": [jnp.asarray(m1), jnp.asarray(m2)]}}
  loss, adapted = _jit(lambda t, e: (_vg(learner, t, e)[0], _adapt(learner, t, e.support)))(
    theta, episode
  )
  np.testing.assert_allclose(loss, _np_loss(phi, episode.query), rtol=RTOL)
  np.testing.assert_allclose(adapted["w"], phi, rtol=RTOL)


# (4) ANIL adapts the head only, and is MAML on the head with the body fixed.


def test_anil_adapts_only_the_head_and_equals_maml_on_the_head():
  a, steps = 0.03, 2
  model, params, episode = _mlp_setup(hidden=(6,))
  anil = algorithms.anil(model, inner_lr=a, inner_steps=steps)
  anil_eval = evaluation.regression(evaluation.curve(algorithms.anil, (0, 1, 3), model, inner_lr=a))
  theta = {"params": params}

  def by_hand(body, head, episode):
    """ANIL written out: `steps` SGD steps on the head, then the query loss."""
    apply = lambda head, x: model.apply({**body, **head}, x)
    support_loss = lambda head: ep.mse(apply(head, episode.support.x), episode.support)
    for _ in range(steps):
      head = jax.tree_util.tree_map(lambda p, g: p - a * g, head, jax.grad(support_loss)(head))
    return ep.mse(apply(head, episode.query.x), episode.query)

  @_jit
  def run(theta, episode):
    body = {k: v for k, v in theta["params"].items() if k != "head"}
    # MAML on a model whose only parameters are the head, with this body fixed.
    head_model = Model(init=None, apply=lambda head, x: model.apply({**body, **head}, x))
    maml_head = algorithms.maml(head_model, inner_lr=a, inner_steps=steps)
    curve = evaluation.curve(algorithms.maml, (0, 1, 3), head_model, inner_lr=a)
    head_theta = {"params": {"head": theta["params"]["head"]}}
    return {
      "anil_phi": _adapt(anil, theta, episode.support),
      "anil": _vg(anil, theta, episode),
      "anil_eval": anil_eval(theta, episode, None),
      "maml_phi": _adapt(maml_head, head_theta, episode.support),
      "maml": _vg(maml_head, head_theta, episode),
      "maml_eval": evaluation.regression(curve)(head_theta, episode, None),
      "body_grad": jax.grad(by_hand)(body, head_theta["params"], episode),
    }

  out = run(theta, episode)
  phi = out["anil_phi"]
  assert set(phi) == set(params) == {"hidden_0", "head"}
  _close(phi["hidden_0"], params["hidden_0"], rtol=0, atol=0)
  assert not np.allclose(phi["head"]["kernel"], params["head"]["kernel"])
  _close(phi["head"], out["maml_phi"]["head"])

  (loss, grad), (head_loss, head_grad) = out["anil"], out["maml"]
  np.testing.assert_allclose(loss, head_loss, rtol=RTOL)
  _close(grad["params"]["head"], head_grad["params"]["head"])
  _close(out["anil_eval"], out["maml_eval"])

  # The body's meta-gradient flows through the head's adaptation (second order).
  _close({k: v for k, v in grad["params"].items() if k != "head"}, out["body_grad"])
  assert np.linalg.norm(out["body_grad"]["hidden_0"]["kernel"]) > 0


# (5) First order: the meta-gradient is the query gradient at the adapted weights.


@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_is_query_gradient_at_phi(steps):
  model, params, episode = _mlp_setup(seed=1)
  theta = {"params": params}
  fomaml = algorithms.maml(model, inner_lr=0.03, inner_steps=steps, first_order=True)
  maml = algorithms.maml(model, inner_lr=0.03, inner_steps=steps)

  @_jit
  def run(theta, episode):
    phi = _adapt(fomaml, theta, episode.support)
    query_grad = jax.grad(lambda p: ep.mse(model.apply(p, episode.query.x), episode.query))(phi)
    return query_grad, _vg(fomaml, theta, episode)[1], _vg(maml, theta, episode)[1]

  want, first, second = run(theta, episode)
  _close(first["params"], want)
  # ... which is not the second-order gradient: the check above has teeth.
  second = second["params"]
  diff = jax.tree_util.tree_map(lambda u, v: float(np.max(np.abs(u - v))), second, want)
  assert max(jax.tree_util.tree_leaves(diff)) > 1e-4


# (6) Several inner steps are a plain SGD loop; remat does not change the gradient.


def test_three_inner_steps_equal_hand_unrolled_sgd():
  a = 0.03
  model, params, episode = _mlp_setup(seed=2)
  learner = algorithms.maml(model, inner_lr=a, inner_steps=3)

  def unrolled(theta):
    support_loss = lambda p: ep.mse(model.apply(p, episode.support.x), episode.support)
    phi = theta["params"]
    for _ in range(3):
      phi = jax.tree_util.tree_map(lambda p, g: p - a * g, phi, jax.grad(support_loss)(phi))
    return ep.mse(model.apply(phi, episode.query.x), episode.query), phi

  one_step = algorithms.maml(model, inner_lr=a, inner_steps=1)

  @_jit
  def run(theta, episode):
    return {
      "want": jax.value_and_grad(unrolled, has_aux=True)(theta),
      "got": _vg(learner, theta, episode),
      "phi": _adapt(learner, theta, episode.support),
      "one_step_phi": _adapt(one_step, theta, episode.support),
    }

  out = run({"params": params}, episode)
  (want_loss, want_phi), want_grad = out["want"]
  loss, grad = out["got"]
  np.testing.assert_allclose(loss, want_loss, rtol=RTOL)
  _close(grad, want_grad)
  _close(out["phi"], want_phi)
  # inner_steps is what the learner takes: one step is not three.
  assert not np.allclose(out["one_step_phi"]["head"]["kernel"], want_phi["head"]["kernel"])


def test_remat_gives_the_same_meta_gradient():
  model, params, episode = _mlp_setup(seed=3)
  theta = {"params": params}
  plain = algorithms.maml(model, inner_lr=0.03, inner_steps=3)
  remat = algorithms.maml(model, inner_lr=0.03, inner_steps=3, remat=True)
  run = _jit(lambda t, e: (_vg(plain, t, e), _vg(remat, t, e)))
  (loss, grad), (remat_loss, remat_grad) = run(theta, episode)
  np.testing.assert_allclose(remat_loss, loss, rtol=RTOL)
  _close(remat_grad, grad)


# (7) The inner update is a transformation built from theta.


def test_metasgd_with_its_rates_held_fixed_is_maml():
  """Meta-SGD's learned rates at inner_lr everywhere give MAML's phi and loss (and its gradient)."""
  a, steps = 0.03, 2
  model, params, episode = _mlp_setup(seed=4)
  metasgd = algorithms.metasgd(model, inner_lr=a, inner_steps=steps)
  maml = algorithms.maml(model, inner_lr=a, inner_steps=steps)
  initial = metasgd.init(jax.random.key(0), episode)["lr"]
  assert jax.tree_util.tree_structure(initial) == jax.tree_util.tree_structure(params)
  assert all(np.allclose(r, a) for r in jax.tree_util.tree_leaves(initial))
  # The rates in the weights' dtype (float64 here), as `init` makes them from float64 weights.
  theta = {"params": params, "lr": jax.tree_util.tree_map(lambda p: jnp.full_like(p, a), params)}

  @_jit
  def run(theta, episode):
    frozen = lambda t: {"params": t, "lr": jax.lax.stop_gradient(theta["lr"])}
    return {
      "metasgd": jax.value_and_grad(lambda p: metasgd.meta_loss(frozen(p), episode, None)[0])(
        theta["params"]
      ),
      "maml": _vg(maml, {"params": theta["params"]}, episode),
      "metasgd_phi": _adapt(metasgd, theta, episode.support),
      "maml_phi": _adapt(maml, {"params": theta["params"]}, episode.support),
    }

  out = run(theta, episode)
  (loss, grad), (maml_loss, maml_grad) = out["metasgd"], out["maml"]
  # The same arithmetic, up to the order XLA gives `-(a * g)` and `(-a) * g` inside one program
  # (the last bit of a float64).
  np.testing.assert_allclose(loss, maml_loss, rtol=1e-14)
  _close(out["metasgd_phi"], out["maml_phi"], rtol=1e-14, atol=1e-15)
  _close(grad, maml_grad["params"], rtol=1e-13, atol=1e-13)


def test_an_inner_optimizer_with_state_is_carried_through_the_inner_loop():
  """MAML with Adam inside equals Adam's updates written out step by step."""
  steps, lr = 3, 0.05
  model, params, episode = _mlp_setup(seed=5)
  learner = algorithms.maml(model, inner_steps=steps, inner_optimizer=optax.adam(lr))

  def by_hand(params):
    loss = lambda p: ep.mse(model.apply(p, episode.support.x), episode.support)
    opt = optax.adam(lr)
    state = opt.init(params)
    for _ in range(steps):
      updates, state = opt.update(jax.grad(loss)(params), state, params)
      params = optax.apply_updates(params, updates)
    return ep.mse(model.apply(params, episode.query.x), episode.query), params

  theta = {"params": params}
  (want_loss, want_phi), want_grad = _jit(jax.value_and_grad(by_hand, has_aux=True))(params)
  loss, grad = _jit(lambda t, e: _vg(learner, t, e))(theta, episode)
  np.testing.assert_allclose(loss, want_loss, rtol=RTOL)
  _close(grad["params"], want_grad)
  _close(_jit(lambda t, s: _adapt(learner, t, s))(theta, episode.support), want_phi)
  # Adam is not SGD: its steps differ from SGD's at the same rate.
  sgd = algorithms.maml(model, inner_steps=steps, inner_lr=lr)
  assert not np.isclose(float(_jit(lambda t, e: _vg(sgd, t, e))(theta, episode)[0]), float(loss))


def test_a_learned_update_is_meta_learned_jointly_with_the_initialisation():
  """A user's `inner.LearnedUpdate` (a learned scalar step) gets its meta-gradient in theta."""
  model, params, episode = _mlp_setup(seed=6)

  def init(key, fast):
    del key, fast
    return jnp.asarray(0.02, jnp.float64)

  def transform(step):
    return optax.scale(-step)

  update = inner.LearnedUpdate(init, transform, name="step")
  learner = algorithms.maml(model, inner_steps=2, inner_optimizer=update)
  theta = learner.init(jax.random.key(0), episode)
  assert set(theta) == {"params", "step"}
  theta = {"params": params, "step": theta["step"]}
  fixed = algorithms.maml(model, inner_steps=2, inner_lr=0.02)
  loss, grad = _jit(lambda t, e: _vg(learner, t, e))(theta, episode)
  fixed_loss, _ = _jit(lambda t, e: _vg(fixed, t, e))({"params": params}, episode)
  np.testing.assert_allclose(loss, fixed_loss, rtol=RTOL)
  # d loss / d step by central differences.
  eps = 1e-6
  f = _jit(lambda s: learner.meta_loss({"params": params, "step": s}, episode, None)[0])
  fd = (f(theta["step"] + eps) - f(theta["step"] - eps)) / (2 * eps)
  np.testing.assert_allclose(grad["step"], fd, rtol=1e-5)
  assert abs(float(grad["step"])) > 0
