"""Type aliases shared across metalearn."""

from __future__ import annotations

from typing import Any

import jax

PyTree = Any
PRNGKey = jax.Array
Params = PyTree  # model weights, a nested dict of arrays
MetaParams = PyTree  # theta: everything the outer loop learns
TaskParams = PyTree  # what `adapt` returns for one task
Metrics = dict[str, jax.Array]
