"""Full-context embeddings of Matching Networks (Vinyals et al. 2016, Appendix A).

Given per-example embeddings g'(x_i) `z [n, d]` of the support set S and
f'(x_hat) `q [m, d]` of the queries:

* g (Appendix A.2): a bidirectional LSTM over the support sequence with a
  skip connection, g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i), where
  h_fwd_i, c_fwd_i = LSTM(g'(x_i), h_fwd_{i-1}, c_fwd_{i-1}) and h_bwd the same
  run from the last element back. g depends on the order of S.
* f (Appendix A.1): an LSTM with K "processing steps" of attention over g(S),
  for k = 1..K:
    h_hat_k, c_k = LSTM(f'(x_hat), [h_{k-1}, r_{k-1}], c_{k-1})
    h_k = h_hat_k + f'(x_hat)
    r_{k-1} = sum_i softmax_i(h_{k-1}^T g(x_i)) g(x_i)
  and f(x_hat, S) = h_K. The read-out r is a sum over the support set, so f
  does not depend on the order of g(S).

Not stated in the paper and chosen here: h_0 = c_0 = 0 (so r_0 is the mean of
g(S)); the LSTM of f takes the concatenation [h, r] (2d values) where a plain
LSTM takes its previous output, and keeps a d-value cell; kernels are
initialised as flax's LSTM cells initialise them (LeCun normal for the input,
orthogonal for the recurrent input), biases at zero.

Masks: support points with `mask` False are skipped by the recurrences (the
state passes over them unchanged) and get no attention, so padding the support
set changes nothing. Their rows of g are zeros.

Every function here acts on one task; the parameters are a plain dict
`{"g_fwd", "g_bwd", "f"}` of `{"wx", "ws", "b"}` arrays.

References:
  Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra. Matching Networks for
  One Shot Learning. NeurIPS 2016, Appendix A; the LSTM of Sutskever, Vinyals,
  Le. Sequence to Sequence Learning with Neural Networks. NeurIPS 2014.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalearn.types import Params, PRNGKey


def lstm_init(key: PRNGKey, inputs: int, state: int, hidden: int) -> Params:
  """One LSTM cell: `wx [inputs, 4 hidden]`, `ws [state, 4 hidden]`, `b [4 hidden]`.

  `state` is the width of the recurrent input (`hidden` for a plain LSTM; `2
  hidden` for f, which also reads r). Gates are ordered input, forget, cell, output.
  """
  kx, ks = jax.random.split(key)
  return {
    "wx": nn.initializers.lecun_normal()(kx, (inputs, 4 * hidden)),
    "ws": nn.initializers.orthogonal()(ks, (state, 4 * hidden)),
    "b": jnp.zeros((4 * hidden,)),
  }


def lstm_step(
  p: Params, x: jax.Array, state: jax.Array, c: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """`(h, c) = LSTM(x, state, c)` for `x [..., inputs]`, `state [..., state]`, `c [..., hidden]`."""
  z = x @ p["wx"] + state @ p["ws"] + p["b"]
  i, f, g, o = jnp.split(z, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return jax.nn.sigmoid(o) * jnp.tanh(c), c


def init(key: PRNGKey, dim: int) -> Params:
  """Parameters of g (two LSTMs of width `dim`) and f (one, reading `[h, r]`)."""
  if not isinstance(dim, int) or dim < 1:
    raise ValueError(f"dim must be a positive int (the embedding width), got {dim!r}")
  kf, kb, ka = jax.random.split(key, 3)
  return {
    "g_fwd": lstm_init(kf, dim, dim, dim),
    "g_bwd": lstm_init(kb, dim, dim, dim),
    "f": lstm_init(ka, dim, 2 * dim, dim),
  }


def _masked_lstm(p: Params, z: jax.Array, mask: jax.Array, reverse: bool) -> jax.Array:
  """Outputs `[n, d]` of an LSTM run over the rows of `z` whose `mask` is True."""
  d = z.shape[-1]

  def step(carry, inputs):
    h, c = carry
    x, keep = inputs
    h_new, c_new = lstm_step(p, x, h, c)
    h, c = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
    return (h, c), jnp.where(keep, h, 0.0)

  zeros = jnp.zeros((d,), z.dtype)
  _, hs = jax.lax.scan(step, (zeros, zeros), (z, mask), reverse=reverse)
  return hs


def support_context(p: Params, z: jax.Array, mask: jax.Array) -> jax.Array:
  """g(S): `z [n, d]` (g'(x_i) in support order), `mask [n]` -> `[n, d]` (masked rows 0)."""
  fwd = _masked_lstm(p["g_fwd"], z, mask, reverse=False)
  bwd = _masked_lstm(p["g_bwd"], z, mask, reverse=True)
  return jnp.where(mask[:, None], fwd + bwd + z, 0.0)


def read(h: jax.Array, g: jax.Array, mask: jax.Array) -> jax.Array:
  """r = sum_i softmax_i(h^T g_i) g_i: `h [m, d]`, `g [n, d]`, `mask [n]` -> `[m, d]`."""
  logits = jnp.where(mask[None, :], h @ g.T, -jnp.inf)
  return jax.nn.softmax(logits, axis=-1) @ g


def query_context(p: Params, q: jax.Array, g: jax.Array, mask: jax.Array, steps: int) -> jax.Array:
  """f(x_hat, S) = h_K: queries `q [m, d]` (f'(x_hat)), `g [n, d]` = g(S) -> `[m, d]`.

  Each query row is processed on its own (its result does not depend on the
  other queries). `steps` is K >= 1.
  """
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be an int >= 1 (processing steps K), got {steps!r}")

  def step(carry, _):
    h, c = carry
    r = read(h, g, mask)
    h_hat, c = lstm_step(p["f"], q, jnp.concatenate([h, r], axis=-1), c)
    return (h_hat + q, c), None

  zeros = jnp.zeros_like(q)
  (h, _), _ = jax.lax.scan(step, (zeros, zeros), None, length=steps)
  return h
