"""Meta-training the LSTM optimizer by truncated backpropagation through the unroll.

For one optimizee task (objective f, start theta_0) and LSTM weights phi,

  theta_{t+1} = theta_t + u_t,   [u_t, h_{t+1}] = m(grad f(theta_t), h_t; phi),

  meta_loss(phi) = (1 / T) sum_{t=1}^{T} f(theta_t),

the paper's Eq. 3 with w_t = 1 divided by T (a mean, so values compare across
unroll lengths; the gradient is the paper's over T). The T = `unroll` steps
run as a `lax.scan` over `unroll / truncation` truncations, each a `lax.scan`
of `truncation` steps. Between truncations the optimizee params and the LSTM
state are `lax.stop_gradient`-ed, so the gradient of each term f(theta_t)
reaches phi only through the updates of its own truncation. With
`second_order=False` the optimizee gradients fed to the LSTM are
`stop_gradient` too: the paper's assumption d grad_t / d phi = 0 (Sec. 2,
Fig. 2, dashed edges), which avoids second derivatives of f.

The unroll is an `estimators.Unrolled` (inner state: the optimizee's params,
the LSTM state and the step t), so the meta-gradient is any estimator of
`estimators`: `estimator="tbptt"` (the paper's; memory of one truncation),
`"es"` (antithetic ES on the full unroll) or `"pes"` (persistent ES, unbiased
whatever the truncation). The optimizee's objective takes the step t, so a
stochastic family (MNIST) draws step t's minibatch.

Within one meta-step the gradients of all truncations are summed (one outer
update per full unroll); the paper instead updates the optimizer after every
truncation, carrying theta_t and h_t on to the next truncation. Doing that
needs per-task state (the optimizee and LSTM state, and PES's accumulated
perturbations) carried across outer steps, which the training loop does not
hold yet.

References:
  Andrychowicz et al. Learning to learn by gradient descent by gradient
  descent. NeurIPS 2016 (Sec. 2, Eq. 3 and Fig. 2; Sec. 3: truncated BPTT,
  Adam; Sec. 3.1: 100 steps, truncations of 20).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metalearn.core import MetaLearner
from metalearn.learned_optim import estimators
from metalearn.learned_optim.lstm import lstm_init, lstm_optimizer
from metalearn.learned_optim.quadratic import Objective, initial_params, quadratic_loss
from metalearn.types import MetaParams, Params


def _check_lengths(unroll: int, truncation: int) -> None:
  for name, n in (("unroll", unroll), ("truncation", truncation)):
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
      raise ValueError(f"{name} must be an int >= 1, got {n!r}")
  if unroll % truncation:
    raise ValueError(f"unroll ({unroll}) must be a multiple of truncation ({truncation})")


class UnrollState(NamedTuple):
  """The inner state between truncations: optimizee params, optimizer state, step t `[]` int32."""

  params: Params
  opt_state: optax.OptState
  t: jax.Array


def optimizee_unroll(
  make_optimizer: Callable[[MetaParams], optax.GradientTransformation],
  *,
  unroll: int,
  truncation: int,
  second_order: bool = False,
  objective: Objective = quadratic_loss,
  start: Callable[[Any], Params] = initial_params,
) -> estimators.Unrolled:
  """`unroll` steps of the optimizer `make_optimizer(theta)` on ONE task, in truncations.

  Truncation j takes steps t = jK ... (j + 1)K - 1 and its loss is
  `(1 / T) sum_{t = jK + 1}^{(j + 1)K} f_t(theta_t)`, so the truncations' losses
  sum to the meta-loss.

  Args:
    make_optimizer: theta -> the (learned) optimizer.
    unroll: T, the number of optimizer steps.
    truncation: K, steps per truncation; T must be a multiple of K.
    second_order: keep the derivatives of the optimizee gradients.
    objective: `(params, task, t) -> []`, the optimizee loss f_t.
    start: `task -> params`, theta_0.

  Returns:
    An `estimators.Unrolled` with T / K truncations; its summary gives
    `final_loss` f_T(theta_T).
  """
  _check_lengths(unroll, truncation)

  def init(theta, task):
    phi = start(task)
    return UnrollState(phi, make_optimizer(theta).init(phi), jnp.zeros([], jnp.int32))

  def one_truncation(theta, state, task):
    optimizer = make_optimizer(theta)

    def step(carry, _):
      phi, opt_state, t = carry
      loss, grads = jax.value_and_grad(objective)(phi, task, t)
      if not second_order:
        grads = jax.lax.stop_gradient(grads)
      updates, opt_state = optimizer.update(grads, opt_state, phi)
      return (optax.apply_updates(phi, updates), opt_state, t + 1), loss

    carry, losses = jax.lax.scan(step, tuple(state), None, length=truncation)
    state = UnrollState(*carry)
    # losses[0] is f at the truncation's start, counted by the previous truncation.
    total = jnp.sum(losses[1:]) + objective(state.params, task, state.t)
    return state, total / unroll

  summary = lambda state, task: {"final_loss": objective(state.params, task, state.t)}
  return estimators.Unrolled(init, one_truncation, unroll // truncation, summary)


def lstm_meta_learner(
  *,
  unroll: int = 100,
  truncation: int = 20,
  second_order: bool = False,
  estimator: str = "tbptt",
  sigma: float = 0.01,
  num_pairs: int = 8,
  hidden: int = 20,
  layers: int = 2,
  skip: bool = True,
  scale: float = 0.1,
  p: float = 10.0,
  preprocess: bool = True,
  objective: Objective = quadratic_loss,
  start: Callable[[Any], Params] = initial_params,
  name: str = "lstm_optimizer",
) -> MetaLearner:
  """The LSTM optimizer as a `MetaLearner`: theta is the LSTM's weights (`lstm_init`).

  `meta_loss(theta, task, key)` is the mean of f_t(theta_t), t = 1 ... T, along
  `unroll` steps of `lstm_optimizer(theta)` from `start(task)`, with the
  truncated gradient described in the module docstring; `meta_grad` is the
  chosen estimator of its gradient (`estimators`); `adapt(theta, task, key)`
  returns theta_T, the optimizee's params after the unroll. Tasks are those
  of `sample_quadratics` by default (any PyTree with a matching `objective`
  and `start`, e.g. `mnist.sample_mlp_tasks`).

  Args:
    unroll: T, optimizee steps per task (100 in the paper's Sec. 3.1).
    truncation: K, steps per truncation (20 in the paper); T % K == 0.
    second_order: differentiate through the optimizee gradients (the paper
      does not: False); TBPTT only (ES and PES take no derivatives).
    estimator: `tbptt` (truncated backpropagation, the paper's), `es`
      (antithetic ES on the full unroll) or `pes` (persistent ES).
    sigma: ES / PES perturbation standard deviation.
    num_pairs: ES / PES antithetic pairs per task.
    hidden, layers: the LSTM's size (`lstm_init`).
    skip: the read-out's weight on the raw gradient (`lstm_init`; zero at
      initialisation). ES and PES perturb it with the rest, and since the
      raw gradients of a quadratic are large, sigma = 1e-3 on it already makes
      some perturbed optimizers diverge within 100 steps; `skip=False` is the
      paper's read-out.
    scale, p, preprocess: the optimizer's (`lstm_optimizer`); the paper's
      quadratics use `preprocess=False, scale=1.0`.
    objective: `(params, task, t) -> []`.
    start: `task -> params`.
    name: for logs.

  Returns:
    A `MetaLearner`; metrics `initial_loss` f_0(theta_0) and `final_loss` f_T(theta_T).

  References: Andrychowicz et al., NeurIPS 2016 (Sec. 2, Eq. 3; Sec. 3);
  Vicol et al., ICML 2021 (PES).
  """
  problem = optimizee_unroll(
    lambda theta: lstm_optimizer(theta, scale=scale, p=p, preprocess=preprocess),
    unroll=unroll,
    truncation=truncation,
    second_order=second_order,
    objective=objective,
    start=start,
  )
  grad = estimators.estimator(estimator, problem, sigma=sigma, num_pairs=num_pairs)
  initial = lambda task: jax.lax.stop_gradient(objective(start(task), task, jnp.asarray(0)))

  def init(key, task):
    del task
    return lstm_init(key, hidden=hidden, layers=layers, preprocess=preprocess, skip=skip)

  def run(theta, task):
    def body(state, _):
      return problem.truncation(theta, jax.lax.stop_gradient(state), task)

    return jax.lax.scan(body, problem.init(theta, task), None, problem.num_truncations)

  def adapt(theta, task, key):
    del key
    return run(theta, task)[0].params

  def meta_loss(theta, task, key):
    del key
    state, losses = run(theta, task)
    metrics = {"initial_loss": initial(task), **problem.summary(state, task)}
    return jnp.sum(losses), metrics

  def meta_grad(theta, task, key):
    g, metrics = grad(theta, task, key)
    return g, {"initial_loss": initial(task), **metrics}

  return MetaLearner(init, adapt, meta_loss, meta_grad, name=name)
