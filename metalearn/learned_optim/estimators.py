"""Meta-gradient estimators of an unrolled meta-objective: truncated backpropagation, ES and PES.

A meta-objective unrolled in J truncations carries an inner state s (the
optimizee's params, the learned optimizer's state, the step count) from one
truncation to the next:

  s_{j+1}, L_j = truncation(theta, s_j),   s_0 = init(theta),   L(theta) = sum_j L_j.

Each estimator below turns such an `Unrolled` into a `meta_grad(theta, task,
key) -> (grad_like_theta, metrics)` for ONE task (the learner's `meta_grad`;
`core.make_meta_step` maps it over the tasks of a meta-batch), with
`metrics["loss"]` the meta-loss (for ES and PES, its mean over the perturbed
particles, the smoothed loss):

- `tbptt`: truncated backpropagation. Truncation j's gradient treats s_j as a
  constant (`lax.stop_gradient`), so the effect of theta on later truncations
  through the state is dropped: biased for J > 1.
- `es`: antithetic evolution strategies on the full unroll. For P pairs
  eps_i ~ N(0, sigma^2 I), each particle runs all J truncations with one
  perturbation,

    g = 1 / (2 P sigma^2) sum_i eps_i (L(theta + eps_i) - L(theta - eps_i)),

  an unbiased estimate of the gradient of the Gaussian-smoothed objective
  E_eps L(theta + eps) (exactly the gradient when L is quadratic in theta).
- `pes`: persistent ES (Vicol et al. 2021, Alg. 2 with antithetic pairs).
  Each particle draws a fresh perturbation eps_ij in every truncation and
  carries its own state s_j^(+-) across truncations; xi_i accumulates the
  perturbations seen so far,

    xi_ij = sum_{k <= j} eps_ik,
    g = sum_j sum_i xi_ij (L_j(theta + eps_ij, s+_ij) - L_j(theta - eps_ij, s-_ij)) / (2 P sigma^2),

  an unbiased estimate of the gradient of E L(theta + eps_1, ..., theta +
  eps_J), the objective smoothed with independent perturbations per
  truncation, however the unroll is cut: no truncation bias.

Theta is held fixed across the truncations of one call (one outer update per
full unroll), as in `lstm_meta_learner`'s TBPTT; PES's persistence lives
inside the call. Particles are batched with `vmap`; theta is flattened
(`ravel_pytree`) to draw the perturbations.

References:
  Vicol, Metz, Sohl-Dickstein. Unbiased gradient estimation in unrolled
  computation graphs with persistent evolution strategies. ICML 2021 (Sec. 3,
  Eq. 4-6; Alg. 2, antithetic PES).
  Salimans, Ho, Chen, Sidor, Sutskever. Evolution strategies as a scalable
  alternative to reinforcement learning. 2017 (antithetic ES).
  Williams, Peng. An efficient gradient-based algorithm for on-line training
  of recurrent network trajectories. 1990 (truncated backpropagation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from metalearn.types import MetaParams, Metrics, PRNGKey

State = Any  # the inner state carried between truncations (any PyTree)
MetaGrad = Callable[[MetaParams, Any, PRNGKey], tuple[MetaParams, Metrics]]


class Unrolled(NamedTuple):
  """A meta-objective `L(theta) = sum_j L_j` unrolled in `num_truncations` truncations, ONE task.

  Attributes:
    init: `(theta, task) -> s_0`, the inner state at the start.
    truncation: `(theta, s_j, task) -> (s_{j+1}, L_j [])`, differentiable in theta.
    num_truncations: J.
    summary: optional `(s_J, task) -> {name: []}`, metrics of the final state
      (averaged over the particles for ES and PES).
  """

  init: Callable[[MetaParams, Any], State]
  truncation: Callable[[MetaParams, State, Any], tuple[State, jax.Array]]
  num_truncations: int
  summary: Callable[[State, Any], Metrics] | None = None


def _summary(problem: Unrolled, state: State, task: Any) -> Metrics:
  return {} if problem.summary is None else dict(problem.summary(state, task))


def full_loss(problem: Unrolled, theta: MetaParams, task: Any) -> tuple[jax.Array, State]:
  """`(L(theta), s_J)`: all truncations with no stops, differentiable end to end."""

  def body(state, _):
    state, loss = problem.truncation(theta, state, task)
    return state, loss

  state, losses = jax.lax.scan(body, problem.init(theta, task), None, problem.num_truncations)
  return jnp.sum(losses), state


def tbptt(problem: Unrolled) -> MetaGrad:
  """Truncated backpropagation: `sum_j d L_j(theta, stop_gradient(s_j)) / d theta`.

  Memory is one truncation's, whatever J. Equals `jax.grad` of the learner's
  truncated meta-loss; equals the full gradient when J = 1.
  """

  def meta_grad(theta, task, key):
    del key

    def body(carry, _):
      state, grad = carry
      state = jax.lax.stop_gradient(state)
      swap = lambda th: tuple(reversed(problem.truncation(th, state, task)))
      (loss, state), g = jax.value_and_grad(swap, has_aux=True)(theta)
      return (state, jax.tree_util.tree_map(jnp.add, grad, g)), loss

    zero = jax.tree_util.tree_map(jnp.zeros_like, theta)
    init = problem.init(theta, task)
    (state, grad), losses = jax.lax.scan(body, (init, zero), None, problem.num_truncations)
    return grad, {**_summary(problem, state, task), "loss": jnp.sum(losses)}

  return meta_grad


def _check(sigma: float, num_pairs: int) -> None:
  if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0:
    raise ValueError(f"sigma must be a number > 0, got {sigma!r}")
  if not isinstance(num_pairs, int) or isinstance(num_pairs, bool) or num_pairs < 1:
    raise ValueError(f"num_pairs must be an int >= 1, got {num_pairs!r}")


def _particles(theta, unravel, eps):
  """`[2P]` thetas: theta + eps_i for the first P, theta - eps_i for the last P."""
  flat, _ = ravel_pytree(theta)
  both = jnp.concatenate([flat + eps, flat - eps])
  return jax.vmap(unravel)(both)


def es(problem: Unrolled, *, sigma: float = 0.01, num_pairs: int = 8) -> MetaGrad:
  """Antithetic ES on the full unroll (one perturbation per particle for all J truncations).

  Args:
    problem: the unrolled meta-objective.
    sigma: standard deviation of the perturbations.
    num_pairs: P antithetic pairs (2P unrolls per task).
  """
  _check(sigma, num_pairs)

  def meta_grad(theta, task, key):
    flat, unravel = ravel_pytree(theta)
    eps = sigma * jax.random.normal(key, (num_pairs, flat.size), flat.dtype)
    run = jax.vmap(lambda th: full_loss(problem, th, task))
    losses, states = run(jax.lax.stop_gradient(_particles(theta, unravel, eps)))
    plus, minus = losses[:num_pairs], losses[num_pairs:]
    g = (plus - minus) @ eps / (2 * num_pairs * sigma**2)
    summary = jax.vmap(lambda s: _summary(problem, s, task))(states)
    metrics = {k: jnp.mean(v) for k, v in summary.items()}
    return unravel(g), {**metrics, "loss": jnp.mean(losses)}

  return meta_grad


def pes(problem: Unrolled, *, sigma: float = 0.01, num_pairs: int = 8) -> MetaGrad:
  """Persistent ES: fresh antithetic perturbations per truncation, their running sum as weight.

  Args:
    problem: the unrolled meta-objective.
    sigma: standard deviation of each truncation's perturbations.
    num_pairs: P antithetic pairs (2P particles, each with its own state).
  """
  _check(sigma, num_pairs)

  def meta_grad(theta, task, key):
    flat, unravel = ravel_pytree(theta)
    flat = jax.lax.stop_gradient(flat)
    shape = (problem.num_truncations, num_pairs, flat.size)
    eps = sigma * jax.random.normal(key, shape, flat.dtype)
    thetas = lambda e: jnp.concatenate([flat + e, flat - e])  # [2P, D]
    step = jax.vmap(lambda th, s: problem.truncation(unravel(th), s, task))

    def body(carry, eps_j):
      states, xi, grad = carry
      xi = xi + eps_j
      states, losses = step(thetas(eps_j), states)
      plus, minus = losses[:num_pairs], losses[num_pairs:]
      grad = grad + (plus - minus) @ xi / (2 * num_pairs * sigma**2)
      return (states, xi, grad), jnp.mean(losses)

    # Each particle starts from its own first theta (init may read theta).
    states = jax.vmap(lambda th: problem.init(unravel(th), task))(thetas(eps[0]))
    carry = (states, jnp.zeros(shape[1:], flat.dtype), jnp.zeros_like(flat))
    (states, _, grad), losses = jax.lax.scan(body, carry, eps)
    summary = jax.vmap(lambda s: _summary(problem, s, task))(states)
    metrics = {k: jnp.mean(v) for k, v in summary.items()}
    return unravel(grad), {**metrics, "loss": jnp.sum(losses)}

  return meta_grad


ESTIMATORS = {"tbptt": tbptt, "es": es, "pes": pes}


def estimator(name: str, problem: Unrolled, *, sigma: float = 0.01, num_pairs: int = 8) -> MetaGrad:
  """The estimator `name` (`tbptt`, `es` or `pes`) of `problem`; sigma and num_pairs for ES/PES.

  Raises:
    ValueError: for an unknown name, or a bad sigma / num_pairs.
  """
  if name not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {name!r}")
  if name == "tbptt":
    return tbptt(problem)
  return ESTIMATORS[name](problem, sigma=sigma, num_pairs=num_pairs)
