"""Looking inside traced programs: which primitives a function's computation uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax


def uses_primitive(fn: Callable[..., Any], args: tuple, prefixes: tuple[str, ...]) -> bool:
  """Whether tracing `fn(*args)` binds a primitive whose name starts with one of `prefixes`.

  Only shapes and dtypes of `args` are used (they may be tracers); nested
  programs (jit, scan, while, cond, custom derivatives) are searched too.
  """
  spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
  return _search(jax.make_jaxpr(fn)(*spec).jaxpr, prefixes)


def _search(jaxpr, prefixes) -> bool:
  for eqn in jaxpr.eqns:
    if eqn.primitive.name.startswith(prefixes):
      return True
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(inner, "eqns") and _search(inner, prefixes):
          return True
  return False
