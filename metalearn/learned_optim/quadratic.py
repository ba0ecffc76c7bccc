"""The quadratic optimizees of Andrychowicz et al. (2016), Sec. 3.1, sampled on the device.

What the paper says (Sec. 3.1): the optimizees are 10-dimensional quadratics

  f(theta) = ||W theta - y||_2^2,

"for different 10x10 matrices W and 10-dimensional vectors y whose elements
are drawn from an IID Gaussian distribution"; optimizers are trained on random
functions of this family and tested on new ones from the same distribution;
"each function was optimized for 100 steps and the trained optimizers were
unrolled for 20 steps", with no preprocessing nor postprocessing.

The paper does not say how theta is initialised. Here theta_0 ~ N(0, 0.01^2 I),
as in the authors' released code (`problems.quadratic`, `stddev=0.01`, in
github.com/deepmind/learning-to-learn). That code draws W and y uniform on
[0, 1) where the paper says Gaussian; the paper is followed here: N(0, 1).

References:
  Andrychowicz et al. Learning to learn by gradient descent by gradient
  descent. NeurIPS 2016 (Sec. 3.1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metalearn import core
from metalearn.types import Params, PRNGKey

Task = dict[str, jax.Array]  # {"W": [d, d], "y": [d], "theta0": [d]}


def sample_quadratics(
  key: PRNGKey, num_tasks: int, *, dim: int = 10, theta_scale: float = 0.01
) -> dict[str, jax.Array]:
  """A batch of quadratic tasks, in JAX from a key (`training.on_device(sample_quadratics)`).

  Args:
    key: PRNG key.
    num_tasks: T, static.
    dim: d, the optimizee's dimension (10 in the paper).
    theta_scale: standard deviation of the initial theta (0.01, as the
      authors' code; the paper does not say).

  Returns:
    `{"W": [T, d, d], "y": [T, d], "theta0": [T, d]}`, W and y i.i.d. N(0, 1),
    theta0 i.i.d. N(0, theta_scale^2), in JAX's default float dtype.
  """
  k_w, k_y, k_t = jax.random.split(key, 3)
  return {
    "W": jax.random.normal(k_w, (num_tasks, dim, dim)),
    "y": jax.random.normal(k_y, (num_tasks, dim)),
    "theta0": theta_scale * jax.random.normal(k_t, (num_tasks, dim)),
  }


def quadratic_loss(theta: jax.Array, task: Task, t: jax.Array | None = None) -> jax.Array:
  """`f(theta) = ||W theta - y||^2` for ONE task: theta `[d]`, W `[d, d]`, y `[d]` -> `[]`.

  `t`, the optimizee's step (which picks a minibatch in stochastic families,
  e.g. `mnist`), is ignored: the quadratic is deterministic.
  """
  del t
  return jnp.sum(jnp.square(task["W"] @ theta - task["y"]))


def initial_params(task: Task) -> jax.Array:
  """Where the optimizee starts: `task["theta0"]` `[d]`."""
  return task["theta0"]


# `(params, task, t) -> []`: the optimizee's loss at its step t (an int32 scalar;
# stochastic families draw step t's minibatch from it, the quadratic ignores it).
Objective = Callable[[Params, Any, jax.Array], jax.Array]


def loss_curve(
  optimizer: optax.GradientTransformation,
  task: Any,
  steps: int,
  *,
  objective: Objective = quadratic_loss,
  start: Callable[[Any], Params] = initial_params,
) -> jax.Array:
  """Losses along `steps` updates of `optimizer` on ONE task, as a `lax.scan`.

  Step t takes the gradient of `objective(phi_t, task, t)` (step t's
  minibatch in a stochastic family) and records that loss.

  Returns:
    `[steps + 1]`: `f_0(theta_0), ..., f_steps(theta_steps)`.
  """
  if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
    raise ValueError(f"steps must be an int >= 0, got {steps!r}")

  def step(carry, t):
    phi, state = carry
    loss, grads = jax.value_and_grad(objective)(phi, task, t)
    updates, state = optimizer.update(grads, state, phi)
    return (optax.apply_updates(phi, updates), state), loss

  phi = start(task)
  (phi, _), losses = jax.lax.scan(step, (phi, optimizer.init(phi)), jnp.arange(steps))
  return jnp.concatenate([losses, objective(phi, task, jnp.asarray(steps))[None]])


def evaluate_optimizer(
  optimizer: optax.GradientTransformation,
  tasks: Any,
  steps: int,
  *,
  objective: Objective = quadratic_loss,
  start: Callable[[Any], Params] = initial_params,
  strategy: str = "vmap",
) -> jax.Array:
  """`loss_curve` on every task of a batch (any optax optimizer, learned or not).

  Args:
    optimizer: e.g. `lstm_optimizer(theta)` or `optax.adam(0.1)`.
    tasks: a batch of tasks `[T, ...]`, e.g. from `sample_quadratics`.
    steps: number of updates, static.
    objective: `(params, task, t) -> []`.
    start: `task -> params` where each run starts.
    strategy: how tasks are batched (`core.batch_over_tasks`).

  Returns:
    `[T, steps + 1]` losses, column 0 at the starting point.
  """
  curve = lambda _, task, key: loss_curve(optimizer, task, steps, objective=objective, start=start)
  keys = jax.random.split(jax.random.PRNGKey(0), core.num_tasks(tasks))  # unused by curve
  return core.batch_over_tasks(curve, strategy)(None, tasks, keys)
