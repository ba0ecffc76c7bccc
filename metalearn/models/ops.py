"""Convolution and pooling written so that their first and second derivatives are fast.

Second-order MAML differentiates a network's gradient once more. With
`lax.conv_general_dilated`, the gradient with respect to the kernel is itself a
convolution (the batch acts as the feature dimension and the image as the
window) which XLA:CPU runs at about 2 GFLOP/s, and the second derivative of
`reduce_window` max-pooling is a select-and-scatter, also slow on a CPU. Here:

- `conv2d_same` computes the forward pass with `lax.conv_general_dilated` and
  defines its own gradient: the input gradient is `conv2d_same` again (with the
  kernel flipped and its channel axes swapped), the kernel gradient is one
  matrix product of the image patches with the output gradient. Because the
  backward pass calls `conv2d_same` and plain array operations only, every
  higher derivative is made of the same fast pieces.
- `max_pool_2x2` takes maxima of strided slices, whose derivatives are selects.

Measured on Conv4 second-order MAML (docs/results.md, `benchmarks/compare_torch.py`).
The values are those of the plain operations to float rounding, first and
second derivatives included (tests/models_test.py).

Limitation: a custom VJP has no forward-mode derivative, so `jax.jvp` /
`jax.linearize` through `conv2d_same` fail; iMAML's Hessian-vector products
detect this and use reverse-over-reverse (`metalearn.inner.implicit`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
  """`[n, h, w, c] -> [n, h, w, kh * kw * c]`: each pixel's SAME-padded neighbourhood."""
  n, h, w, c = x.shape
  ph, pw = kh // 2, kw // 2
  xp = jnp.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
  # Stacked on a new axis before the channels: the layout of concatenating
  # along the channels, which XLA:CPU was slower at in isolation.
  windows = [xp[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)]
  return jnp.stack(windows, axis=3).reshape(n, h, w, kh * kw * c)


@jax.custom_vjp
def conv2d_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 SAME convolution (cross-correlation) with odd kernel sizes.

  Args:
    x: images `[n, h, w, c_in]`.
    kernel: `[kh, kw, c_in, c_out]` (HWIO, as `flax.linen.Conv`), kh and kw odd.

  Returns:
    `[n, h, w, c_out]`, equal to `lax.conv_general_dilated(x, kernel, (1, 1), "SAME")`.
  """
  if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
    raise ValueError(f"conv2d_same needs odd kernel sizes, got kernel shape {kernel.shape}")
  return lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _conv_fwd(x, kernel):
  return conv2d_same(x, kernel), (x, kernel)


def _conv_bwd(residuals, g):
  x, kernel = residuals
  kh, kw, c_in, c_out = kernel.shape
  # Input gradient: the same convolution with the kernel rotated by 180 degrees
  # and its input/output channels swapped (exact for stride 1, odd sizes, SAME).
  dx = conv2d_same(g, jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
  # Kernel gradient: patches^T @ g, one matrix product over all pixels.
  cols = _patches(x, kh, kw).reshape(-1, kh * kw * c_in)
  dk = (cols.T @ g.reshape(-1, c_out)).reshape(kernel.shape)
  return dx, dk


conv2d_same.defvjp(_conv_fwd, _conv_bwd)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2, VALID: `[n, h, w, c] -> [n, h // 2, w // 2, c]`.

  Same values as `flax.linen.max_pool(x, (2, 2), (2, 2))` (an odd last row or
  column is dropped), written as two elementwise maxima of strided slices. At
  ties the gradient is split equally between the tied inputs.
  """
  h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  x = x[:, :h, :w]
  x = jnp.maximum(x[:, 0::2], x[:, 1::2])
  return jnp.maximum(x[:, :, 0::2], x[:, :, 1::2])
