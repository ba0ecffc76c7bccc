"""Shared fixtures: float32 JAX, a tiny sinusoid batch, and a float64 scope for exact tests."""

import jax
import numpy as np
import pytest

from metalearn.data.sinusoid import Sinusoid

# Tests run in float32 (the library's default) unless they ask for the `x64` fixture.
jax.config.update("jax_enable_x64", False)

NUM_TASKS = 4
SHOTS = 5
QUERIES = 5


@pytest.fixture
def sinusoid_batch():
  """A batch of 4 sinusoid episodes, 5 support and 5 query points: `[4, 5, 1]` float32."""
  return Sinusoid(shots=SHOTS, queries=QUERIES).sample(np.random.default_rng(0), NUM_TASKS)


@pytest.fixture
def x64():
  """Runs the test with 64-bit floats enabled (arrays made inside are float64)."""
  with jax.enable_x64(True):
    yield
