"""Learned linear maps after a network's layers (T-Net's transformations, WarpGrad's linear warps).

A *layer* is any parameter group holding a `kernel` of rank >= 2 whose last
axis is its output (flax's Dense `[in, out]`, a convolution `[kh, kw, in, out]`),
with an optional `bias [out]`. Inserting a map `T [out, out]` after a layer,
before its normalisation or nonlinearity, gives

  y = (x K + b) T = x (K T) + (b T),

so the network with maps is the same network with kernel `K T` and bias `b T`
(for a convolution, `T` is a 1x1 convolution and `K T` multiplies the kernel's
output axis). `transform_layers` computes those weights; a model never needs
rewriting, and the maps live apart from the weights, as a PyTree shaped like
the layer groups (`{"hidden_0": T0, "head": T2}` for `models.MLP`).

Every other parameter (batch normalisation's scale and offset) is left as it is.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import traverse_util

from metalearn.types import Params, PyTree


def _layer_prefixes(params: Params) -> dict[tuple[str, ...], int]:
  """`{path of a layer group: its output width}` for every `kernel` of rank >= 2."""
  flat = traverse_util.flatten_dict(params)
  return {
    path[:-1]: leaf.shape[-1]
    for path, leaf in flat.items()
    if path[-1] == "kernel" and getattr(leaf, "ndim", 0) >= 2
  }


def layer_widths(params: Params) -> dict[str, int]:
  """`{"/"-joined path of a layer group: output width}`, in the order flax lists them."""
  return {"/".join(p): w for p, w in _layer_prefixes(params).items()}


def per_layer(params: Params, make) -> PyTree:
  """A PyTree with `make(width, dtype)` at each layer group's path (nested like `params`).

  Raises:
    ValueError: if `params` has no layer (no `kernel` of rank >= 2).
  """
  prefixes = _layer_prefixes(params)
  if not prefixes:
    raise ValueError("model: its parameters have no layer (a 'kernel' of rank >= 2) to map")
  flat = traverse_util.flatten_dict(params)
  dtype = {p[:-1]: leaf.dtype for p, leaf in flat.items() if p[:-1] in prefixes}
  return traverse_util.unflatten_dict({p: make(w, dtype[p]) for p, w in prefixes.items()})


def identity_maps(params: Params) -> PyTree:
  """One identity matrix `[out, out]` per layer group: the maps that change nothing."""
  return per_layer(params, lambda width, dtype: jnp.eye(width, dtype=dtype))


def _map_leaves(params: Params, maps: PyTree, fn) -> Params:
  """Applies `fn(leaf, map)` to each layer's kernel and bias; other leaves pass unchanged."""
  flat_maps = traverse_util.flatten_dict(maps)
  out = {}
  for path, leaf in traverse_util.flatten_dict(params).items():
    m = flat_maps.get(path[:-1])
    out[path] = fn(leaf, m) if m is not None and path[-1] in ("kernel", "bias") else leaf
  return traverse_util.unflatten_dict(out)


def transform_layers(params: Params, maps: PyTree) -> Params:
  """The weights of the network with `maps` inserted: kernel `K @ T`, bias `b @ T` per layer.

  Args:
    params: the network's weights (W).
    maps: `T [out, out]` per layer group (from `identity_maps` or learned).

  Returns:
    Weights of the same structure, for the unmapped network's `apply`.
  """
  return _map_leaves(params, maps, lambda leaf, t: jnp.matmul(leaf, t))


def multiply_output_axis(grads: Params, matrices: PyTree) -> Params:
  """`G @ P` along the output axis of each layer's kernel and bias gradient; others unchanged."""
  return _map_leaves(grads, matrices, lambda g, p: jnp.matmul(g, p))
