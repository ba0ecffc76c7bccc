"""WarpGrad: meta-learned warp layers between task layers, trained without backpropagating
through adaptation.

The task learner is the network with a warp `Omega [out, out]` after each layer,
`y = (x W + b) Omega` (`models.warped`). The inner loop adapts only the task
weights W by SGD; the warps are meta-learned with the trajectory-agnostic
objective of the paper (its reference code's `warp_on_same_loss`): at each
point `W_k` of the task's inner trajectory, held constant (stop-gradient, so
no backpropagation through the trajectory), one warped step on the support
loss is taken and the query loss scored,

  J(Omega) = 1/K sum_{k<K} L_q(W_k - alpha grad_W L_s(W_k; Omega); Omega),   W_k fixed.

The initialisation W_0 is meta-learned with first-order MAML (the query loss
at `W_K`, the trajectory's Jacobian taken as the identity): with identity
warps this learner is first-order MAML exactly (the warp gradient is then the
only addition). `meta_loss` returns the query loss after adaptation; its
gradient is first-order MAML's for `params` and `grad J` for `warp` (the
surrogate `L_q(W_K) + J - stop_gradient(J)`), and it reports `warp_objective`.

As a transformation of the inner gradient: with these linear warps the
warped step on W is, on the unwarped network `A = W Omega`, the preconditioned
step `A' = A - alpha G_A Omega^T Omega` (T-Net's `precondition_layers`), an
exact view; the paper's warps may be nonlinear (convolution blocks), whose
preconditioner `J_omega^T J_omega` depends on the activations and is not a
fixed matrix -- they are not built here. What differs from T-Net is the
meta-objective, not the inner update.

References:
  Flennerhag, Rusu, Pascanu, Visin, Yin, Hadsell. Meta-Learning with Warped
  Gradient Descent. ICLR 2020 (warp layers; the meta-objective over task
  parameters sampled along inner trajectories, with stop-gradient; Algorithm 1,
  online), and github.com/flennerhag/warpgrad (updaters.py, `warp_on_same_loss`
  with `approx=False`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalearn import episodes as ep
from metalearn import inner
from metalearn.algorithms import common
from metalearn.core import MetaLearner, predictor
from metalearn.models import Model, as_model, warped

_sg = jax.lax.stop_gradient


def _sgd_step(params, grads, lr):
  return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)


def warpgrad(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  objective: str | ep.Objective = "mse",
) -> MetaLearner:
  """WarpGrad with linear warp layers and a first-order MAML initialisation.

  Args:
    model: the task network; a warp follows each of its Dense / conv layers.
    inner_lr: inner SGD step alpha (on W, in the warped network).
    inner_steps: K, inner steps (and trajectory points of the warp objective).
    objective: `"mse"`, `"cross_entropy"` or an `episodes.Objective`.

  Returns:
    A `MetaLearner` with theta `{"params": W_0, "warp": Omega [out, out] per
    layer}` (identity warps at initialisation); `adapt` returns the unwarped
    network with weights `transform_layers(W_K, Omega)`.

  References: Flennerhag et al., ICLR 2020, Sec. 3.
  """
  inner.sgd(inner_lr)  # the one check of inner_lr
  inner.gradient.check_steps(inner_steps)
  model, objective = as_model(model), ep.get_objective(objective)

  def init(key, episode):
    params = model.init(key, episode.support.x)
    return {"params": params, "warp": warped.identity_maps(params)}

  def loss_at(w, omega, split):
    return objective.loss(model.apply(warped.transform_layers(w, omega), split.x), split)

  def trajectory(theta, support):
    """`W_K` after K warped SGD steps on the support loss; the warps stay as they are."""
    step = lambda w, _: (_sgd_step(w, jax.grad(loss_at)(w, theta["warp"], support), inner_lr), None)
    if inner_steps == 0:
      return theta["params"]
    return jax.lax.scan(step, theta["params"], None, length=inner_steps)[0]

  def adapt(theta, support, key):
    del key
    return predictor(
      model.apply, warped.transform_layers(trajectory(theta, support), theta["warp"])
    )

  def meta_loss(theta, episode, key):
    del key
    ep.check_episode(episode, batched=False)
    omega, support, query = theta["warp"], episode.support, episode.query

    def point(w, _):
      w = _sg(w)  # a sampled task parameter: a constant of the meta-objective
      grads = jax.grad(loss_at)(w, omega, support)  # warped gradient, a function of Omega
      stepped = _sgd_step(w, grads, inner_lr)
      return _sg(stepped), loss_at(stepped, omega, query)

    w0 = theta["params"]
    if inner_steps == 0:
      w_k, warp_objective = w0, jnp.zeros([], jnp.result_type(*jax.tree_util.tree_leaves(w0)))
    else:
      w_k, j = jax.lax.scan(point, w0, None, length=inner_steps)
      warp_objective = jnp.mean(j)
    # First-order MAML for the initialisation: W_K with the trajectory's Jacobian the identity.
    w_final = jax.tree_util.tree_map(lambda a, b: a + _sg(b - a), w0, w_k)
    phi = warped.transform_layers(w_final, _sg(omega))
    loss, metrics = common.query_loss(predictor(model.apply, phi), objective, query)
    metrics["warp_objective"] = _sg(warp_objective)
    return loss + (warp_objective - _sg(warp_objective)), metrics

  return MetaLearner(init, adapt, meta_loss, name="warpgrad")
