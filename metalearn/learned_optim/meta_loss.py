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

Within one meta-step the gradients of all truncations are summed (one outer
update per full unroll); the paper instead updates the optimizer after every
truncation, carrying theta_t and h_t on to the next truncation. Doing that
needs per-task state (the optimizee and LSTM state) carried across outer
steps, which the training loop does not hold yet. The truncations here bound
how far gradients travel back, not the memory of a meta-step.

References:
  Andrychowicz et al. Learning to learn by gradient descent by gradient
  descent. NeurIPS 2016 (Sec. 2, Eq. 3 and Fig. 2; Sec. 3: truncated BPTT,
  Adam; Sec. 3.1: 100 steps, truncations of 20).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metalearn.core import MetaLearner
from metalearn.learned_optim.lstm import lstm_init, lstm_optimizer
from metalearn.learned_optim.quadratic import Objective, initial_params, quadratic_loss
from metalearn.types import Params


def _check_lengths(unroll: int, truncation: int) -> None:
  for name, n in (("unroll", unroll), ("truncation", truncation)):
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
      raise ValueError(f"{name} must be an int >= 1, got {n!r}")
  if unroll % truncation:
    raise ValueError(f"unroll ({unroll}) must be a multiple of truncation ({truncation})")


def truncated_unroll(
  optimizer: optax.GradientTransformation,
  task: Any,
  *,
  unroll: int,
  truncation: int,
  second_order: bool = False,
  objective: Objective = quadratic_loss,
  start: Callable[[Any], Params] = initial_params,
) -> tuple[Params, jax.Array, jax.Array]:
  """Runs `unroll` optimizer steps on ONE task in truncations of `truncation` steps.

  Args:
    optimizer: the (learned) optimizer, built from the meta-parameters.
    task: one task, given to `objective` and `start`.
    unroll: T, the number of optimizer steps.
    truncation: K, steps per truncation; T must be a multiple of K.
    second_order: keep the derivatives of the optimizee gradients.
    objective: `(params, task) -> []`, the optimizee loss f.
    start: `task -> params`, theta_0.

  Returns:
    `(theta_T, sums [T / K], ends [T / K])`: the final params; for each
    truncation j, the sum of f(theta_t) over its steps t = jK + 1 ... (j + 1)K,
    each differentiable only through truncation j's updates; and f at its end.
  """
  _check_lengths(unroll, truncation)

  def step(carry, _):
    phi, state = carry
    loss, grads = jax.value_and_grad(objective)(phi, task)
    if not second_order:
      grads = jax.lax.stop_gradient(grads)
    updates, state = optimizer.update(grads, state, phi)
    return (optax.apply_updates(phi, updates), state), loss

  def one_truncation(carry, _):
    carry = jax.lax.stop_gradient(carry)  # no gradient across the boundary
    carry, losses = jax.lax.scan(step, carry, None, length=truncation)
    end = objective(carry[0], task)
    # losses[0] is f at the truncation's (stopped) start: constant, and counted
    # as the previous truncation's end; the others and `end` are its K terms.
    return carry, (jnp.sum(losses[1:]) + end, end)

  phi = start(task)
  (phi, _), (sums, ends) = jax.lax.scan(
    one_truncation, (phi, optimizer.init(phi)), None, length=unroll // truncation
  )
  return phi, sums, ends


def lstm_meta_learner(
  *,
  unroll: int = 100,
  truncation: int = 20,
  second_order: bool = False,
  hidden: int = 20,
  layers: int = 2,
  scale: float = 0.1,
  p: float = 10.0,
  preprocess: bool = True,
  objective: Objective = quadratic_loss,
  start: Callable[[Any], Params] = initial_params,
  name: str = "lstm_optimizer",
) -> MetaLearner:
  """The LSTM optimizer as a `MetaLearner`: theta is the LSTM's weights (`lstm_init`).

  `meta_loss(theta, task, key)` is the mean of f(theta_t), t = 1 ... T, along
  `unroll` steps of `lstm_optimizer(theta)` from `start(task)`, with the
  truncated gradient described in the module docstring; `adapt(theta, task,
  key)` returns theta_T, the optimizee's params after the unroll. Tasks are
  those of `sample_quadratics` by default (any PyTree with a matching
  `objective` and `start`).

  Args:
    unroll: T, optimizee steps per task (100 in the paper's Sec. 3.1).
    truncation: K, steps per truncation (20 in the paper); T % K == 0.
    second_order: differentiate through the optimizee gradients (the paper
      does not: False).
    hidden, layers: the LSTM's size (`lstm_init`).
    scale, p, preprocess: the optimizer's (`lstm_optimizer`); the paper's
      quadratics use `preprocess=False, scale=1.0`.
    objective: `(params, task) -> []`.
    start: `task -> params`.
    name: for logs.

  Returns:
    A `MetaLearner`; metrics `initial_loss` f(theta_0) and `final_loss` f(theta_T).

  References: Andrychowicz et al., NeurIPS 2016 (Sec. 2, Eq. 3; Sec. 3).
  """
  _check_lengths(unroll, truncation)
  run = lambda theta, task: truncated_unroll(
    lstm_optimizer(theta, scale=scale, p=p, preprocess=preprocess),
    task,
    unroll=unroll,
    truncation=truncation,
    second_order=second_order,
    objective=objective,
    start=start,
  )

  def init(key, task):
    del task
    return lstm_init(key, hidden=hidden, layers=layers, preprocess=preprocess)

  def adapt(theta, task, key):
    del key
    return run(theta, task)[0]

  def meta_loss(theta, task, key):
    del key
    _, sums, ends = run(theta, task)
    initial = jax.lax.stop_gradient(objective(start(task), task))
    return jnp.sum(sums) / unroll, {"initial_loss": initial, "final_loss": ends[-1]}

  return MetaLearner(init, adapt, meta_loss, name=name)
