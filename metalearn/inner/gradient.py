"""The inner loop: a fixed number of optimizer steps on one task's loss, as `lax.scan`.

Written once and used by MAML and its relatives, Reptile and the fine-tuning
baseline. The inner optimizer is any optax `GradientTransformation` (plain SGD
by default) and its state is carried through the scan; learned updates
(Meta-SGD's rates, Meta-Curvature's preconditioner, a learned optimizer) are
transformations built from theta (`metalearn.inner.learned`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from metalearn.types import Params

LossFn = Callable[[Params], jax.Array]


def sgd(learning_rate: float) -> optax.GradientTransformation:
  """Plain gradient descent `phi <- phi - lr * g`, checking that lr > 0."""
  if not learning_rate > 0:
    raise ValueError(f"inner_lr must be > 0, got {learning_rate}")
  return optax.sgd(learning_rate)


def check_steps(num_steps: int) -> None:
  if not isinstance(num_steps, int) or num_steps < 0:
    raise ValueError(f"inner_steps must be an int >= 0, got {num_steps!r}")


def gradient_descent(
  loss_fn: LossFn,
  params: Params,
  *,
  num_steps: int,
  optimizer: optax.GradientTransformation,
  first_order: bool = False,
  remat: bool = False,
  observe: Callable[[Params], jax.Array] | None = None,
) -> tuple[Params, jax.Array, jax.Array | None]:
  """Runs `num_steps` inner updates `phi <- phi + opt(grad L(phi))` as a `lax.scan`.

  Differentiable end to end: `jax.grad` through the result is second-order
  MAML. With `first_order=True` each inner gradient is treated as a constant
  (`stop_gradient`), which is first-order MAML.

  Args:
    loss_fn: `params -> scalar` inner loss (closes over the support split).
    params: starting point phi_0 (theta for MAML).
    num_steps: number of updates, a static int >= 0.
    optimizer: the inner optimizer (its state starts from `optimizer.init(params)`
      and is carried from step to step).
    first_order: drop second-order terms from the meta-gradient.
    remat: rematerialise each step in the backward pass (`jax.checkpoint`),
      trading compute for memory that does not grow with stored activations.
    observe: optional `params -> scalar` recorded before each step and after
      the last (e.g. the query loss), for adaptation curves.

  Returns:
    `(phi, losses [num_steps], observed [num_steps + 1] or None)`, where
    `losses[i]` is the inner loss before update i.
  """
  check_steps(num_steps)
  if num_steps == 0:
    return params, jnp.zeros([0]), (None if observe is None else observe(params)[None])

  def body(carry, _):
    phi, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(phi)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    updates, opt_state = optimizer.update(grads, opt_state, phi)
    seen = observe(phi) if observe is not None else jnp.zeros([])
    return (optax.apply_updates(phi, updates), opt_state), (loss, seen)

  if remat:
    body = jax.checkpoint(body)
  (phi, _), (losses, seen) = jax.lax.scan(
    body, (params, optimizer.init(params)), None, length=num_steps
  )
  if observe is None:
    return phi, losses, None
  return phi, losses, jnp.concatenate([seen, observe(phi)[None]])
