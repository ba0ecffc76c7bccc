"""iMAML: meta-learning an initialisation through the implicit gradient of a proximal inner problem.

For a task with support loss L_s and query loss L_q, the task's weights are the
(approximate) solution of

  phi*(theta) = argmin_phi  L_s(phi) + (lam / 2) ||phi - theta||^2,

found by K steps of an inner optimizer started at theta, and the meta-loss is
L_q(phi*). Its gradient is not obtained by differentiating the K steps but by
the implicit function theorem,

  d L_q(phi*) / d theta = (I + H / lam)^-1 grad L_q(phi*),   H = hess L_s(phi*),

a linear system solved by a few conjugate-gradient iterations with
Hessian-vector products. Meta-training memory does not depend on K and the
inner optimizer need not be differentiable. The gradient sits behind
`jax.custom_vjp` (`inner.implicit`), so `jax.grad(meta_loss)` is the meta-gradient
and the outer loop treats iMAML like any other learner.

References:
  Rajeswaran, Finn, Kakade, Levine. Meta-Learning with Implicit Gradients.
  NeurIPS 2019 (Eq. 3-6, Algorithm 1 and 2).
"""

from __future__ import annotations

import flax.linen as nn
import optax

from metalearn import episodes as ep
from metalearn import inner
from metalearn.algorithms import common
from metalearn.core import MetaLearner, predictor
from metalearn.inner import implicit
from metalearn.models import Model, as_model


def imaml(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 10,
  lam: float = 1.0,
  cg_steps: int = 5,
  solver: str | implicit.Solver = "cg",
  damping: float = 0.0,
  lam_damping: float = 0.0,
  inner_clip: float = 0.0,
  inner_solver: str = "sgd",
  newton_cg_steps: int = 10,
  inner_optimizer: optax.GradientTransformation | None = None,
  objective: str | ep.Objective = "mse",
) -> MetaLearner:
  """iMAML with a proximal inner problem solved by `inner_steps` optimizer steps.

  `adapt(theta, support, key)` returns the proximal solution phi as a
  predictor (differentiable: `jax.grad` through it is the implicit gradient).
  `meta_loss` returns the query loss of phi and the metrics `query_<metric>`,
  `cg_residual` (norm of the final residual of the linear solve; non-finite if
  it broke down, in which case the gradient is non-finite too and
  `core.make_meta_step` skips the update) and `inner_grad_norm` (norm of the
  proximal objective's gradient at phi, 0 when the inner problem is solved
  exactly, which the implicit gradient assumes).

  The implicit gradient is meaningful where the proximal problem is strongly
  convex at phi, i.e. every eigenvalue of the support-loss Hessian exceeds
  `-lam`. Where it is not (a small `lam` with a ReLU network far from a
  minimum), `I + H / lam` is indefinite: CG stops at the first direction of
  non-positive curvature and `cg_residual` stays large; raise `lam`, add
  `damping`, or take more inner steps. In float32 such indefinite solves are
  also sensitive to rounding (results of `jit`, eager and `vmap` can then
  differ in more than the last digits).

  Adaptation curves (`evaluation`, `name@k` from `imaml(..., inner_steps=k)`)
  take k *proximal* inner steps, the same inner problem as `adapt`: theta is
  meta-trained for that adaptation, and at meta-test time the paper adapts
  with the same regularised objective. The proximal term vanishes at phi =
  theta, so `@0` and `@1` equal those of plain fine-tuning from theta; the
  curves of the other learners differ from iMAML's only from k = 2 on, by the
  pull towards theta.

  Args:
    model: network (flax module with params only, or a `Model`).
    inner_lr: inner SGD step size (ignored when `inner_optimizer` is given); for
      SGD to converge on the proximal problem it must be below
      `2 / (lam + L)`, with L the largest curvature of the support loss.
    inner_steps: K, inner steps during meta-training.
    lam: proximal weight lambda > 0: large keeps phi near theta (well
      conditioned, Neumann converges), small lets the task move phi further.
    cg_steps: iterations of the linear solver (CG iterations or Neumann terms), >= 1.
    solver: `"cg"`, `"neumann"` or a callable (see `inner.implicit.make_solver`).
    damping: `>= 0`, solves `((1 + damping) I + H / lam) u = g`, for inner
      losses whose Hessian is not positive semi-definite.
    lam_damping: `>= 0`, added to lam in that system only (not in the inner
      problem): `((1 + damping) I + H / (lam + lam_damping)) u = g`. The
      authors' released Omniglot code (aravindr93/imaml_dev) solves
      `2 u + H u / (lam + 10)` with lam 2 (damping 1, lam_damping 10), 5 CG
      steps, after 16 GD steps at lr 0.1 on the support loss *without* the
      proximal term (then one step back towards theta); a heuristic that
      weakens the curvature correction, not part of the paper's derivation.
      `lam=0.01, lam_damping=11.99, damping=1` comes close to that code (the
      proximal pull is then negligible over 16 steps and the system is the
      same); measured on Omniglot in docs/results.md.
    inner_clip: when > 0, the inner SGD clips each gradient of the
      proximal objective to this global norm. The implicit gradient assumes
      the inner problem solved and does not see the inner optimizer's
      stability, so meta-training can move theta to where fixed-step SGD
      overshoots and diverges (measured on sinusoid: every unclipped setting
      tried ended non-finite; docs/results.md); clipping bounds each step.
    inner_solver: `"sgd"` (`inner_steps` steps of SGD at `inner_lr`, or of
      `inner_optimizer`) or `"newton"`: `inner_steps` damped Newton-CG steps on
      the proximal objective (`inner.implicit.Newton`: `newton_cg_steps` CG
      iterations on `(H + lam I) d = grad`, then an Armijo backtracking line
      search), which reaches the proximal minimiser the implicit gradient
      assumes in a few steps where fixed-step SGD does not (measured on
      sinusoid in docs/imaml.md); `inner_lr` and `inner_clip` are then unused.
    newton_cg_steps: CG iterations per Newton step (`inner_solver="newton"`), >= 1.
    inner_optimizer: any optax transformation for the inner loop (Adam, as in
      the paper's Omniglot runs, or SGD); it is never differentiated and
      replaces `inner_lr` and `inner_clip`.
    objective: `"mse"`, `"cross_entropy"` or an `episodes.Objective`.

  Returns:
    A `MetaLearner` whose theta is `{"params": ...}`.

  Raises:
    ValueError: naming the argument, for `lam <= 0`, `cg_steps < 1`, an unknown
      `inner_solver`, `newton_cg_steps < 1`,
      `damping < 0`, `lam_damping < 0`, `inner_clip < 0`, an unknown `solver`, `inner_steps < 0`,
      or `inner_lr <= 0` (when no `inner_optimizer` is given).

  References: Rajeswaran, Finn, Kakade, Levine. Meta-Learning with Implicit
  Gradients. NeurIPS 2019 (Algorithm 2; Neumann alternative: Lorraine et al. 2020).
  """
  # lam, inner_steps, cg_steps, solver, damping and lam_damping are checked once, where they
  # are used: by `implicit.make_solver` and `implicit.implicit_meta_loss`, built here.
  if inner_clip is None:  # the older spelling of "off"
    inner_clip = 0.0
  if not float(inner_clip) >= 0:
    raise ValueError(f"inner_clip must be >= 0 (0: no clipping), got {inner_clip}")
  if inner_solver not in ("sgd", "newton"):
    raise ValueError(f"inner_solver must be 'sgd' or 'newton', got {inner_solver!r}")
  if inner_solver == "newton":
    if inner_optimizer is not None:
      raise ValueError("inner_solver='newton' takes no inner_optimizer (it is its own solver)")
    if not isinstance(newton_cg_steps, int) or newton_cg_steps < 1:
      raise ValueError(f"newton_cg_steps must be an int >= 1, got {newton_cg_steps!r}")
    optimizer = implicit.Newton(cg_steps=newton_cg_steps)
  else:
    optimizer = inner_optimizer or inner.sgd(inner_lr)
  if inner_optimizer is None and inner_clip and inner_solver == "sgd":
    optimizer = optax.chain(optax.clip_by_global_norm(float(inner_clip)), optimizer)
  solve = implicit.make_solver(solver, cg_steps=cg_steps, damping=damping)
  model, objective = as_model(model), ep.get_objective(objective)

  def support_loss(phi, support):
    return objective.loss(model.apply(phi, support.x), support)

  def init(key, episode):
    return {"params": model.init(key, episode.support.x)}

  def adapt(theta, support, key):
    del key
    solve_inner = implicit.implicit_solve(
      support_loss,
      lam=lam,
      num_steps=inner_steps,
      optimizer=optimizer,
      solver=solve,
      lam_damping=lam_damping,
    )
    return predictor(model.apply, solve_inner(theta["params"], support))

  loss_fn = implicit.implicit_meta_loss(
    support_loss,
    lambda phi, query: common.query_loss(predictor(model.apply, phi), objective, query),
    lam=lam,
    num_steps=inner_steps,
    optimizer=optimizer,
    solver=solve,
    lam_damping=lam_damping,
  )

  def meta_loss(theta, episode, key):
    del key
    ep.check_episode(episode, batched=False)
    return loss_fn(theta["params"], episode.support, episode.query)

  return MetaLearner(init, adapt, meta_loss, name="imaml")
