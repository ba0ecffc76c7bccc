"""Helpers of the benchmark scripts that do not measure anything themselves."""

import numpy as np

from benchmarks import imaml_memory


def test_imaml_memory_plot_writes_png_and_skips_failed_rows(tmp_path):
  rows = []
  for method, scale in (("maml", 10.0), ("imaml", 0.0)):
    for k in (1, 10, 100):
      rows.append(
        {"method": method, "inner_steps": k, "xla_total_mb": 100 + scale * k, "step_s": 0.1 * k}
      )
  rows.append({"method": "fomaml", "inner_steps": 1, "error": "timed out"})
  png = tmp_path / "memory.png"
  imaml_memory.plot(rows, str(png), meta_batch_size=1)
  data = png.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  assert len(data) > 10_000  # two panels with axes, lines and a legend


def test_step_flops_from_one_and_two_tasks_equals_the_unrolled_count():
  import jax
  import numpy as np
  import optax

  from benchmarks import common
  from metalearn import algorithms, core
  from metalearn import episodes as ep
  from metalearn.models import Conv4

  learner = algorithms.maml(
    Conv4(ways=2, channels=4, blocks=2), inner_lr=0.1, objective="cross_entropy"
  )
  rng = np.random.default_rng(0)

  def split(k):
    x = rng.uniform(size=(5, 2 * k, 8, 8, 1)).astype(np.float32)
    y = np.tile(np.repeat(np.arange(2), k), (5, 1)).astype(np.int32)
    return ep.make_split(x, y, np.ones((5, 2 * k), bool))

  batch = ep.Episode(split(1), split(3))
  optimizer = optax.adam(1e-3)
  state = core.init_state(learner, optimizer, jax.random.key(0), ep.task(batch, 0))
  unrolled = jax.jit(core.make_meta_step(learner, optimizer, strategy="unroll"))
  want = common.compiled_flops(unrolled.lower(state, batch).compile())
  got = common.step_flops(learner, optimizer, state, batch)
  assert want > 0
  np.testing.assert_allclose(got, want, rtol=1e-3)


def test_ambiguity_tells_lines_from_sinusoids_and_flags_ambiguous_support_sets():
  from benchmarks import ambiguity

  grid = ambiguity.GRID
  functions = np.stack([2.0 * grid - 1.0, 3.0 * np.sin(grid - 0.7), -0.5 * grid + 2.0])
  line, sine = ambiguity.fit_rms(grid, functions)
  np.testing.assert_allclose([line[0], line[2], sine[1]], 0.0, atol=1e-9)
  assert (sine[[0, 2]] > 0.5).all() and line[1] > 0.5
  np.testing.assert_array_equal(ambiguity.is_line_like(functions), [True, False, True])
  x = np.array([[-4.0, -2.0, 0.0, 2.0, 4.0], [-4.0, -2.0, 0.0, 2.0, 4.0]])
  y = np.stack([3.0 * x[0], np.full(5, 0.05)])  # a steep line; a flat one that sin/cos fit too
  np.testing.assert_array_equal(ambiguity.is_ambiguous(x, y, noise=0.3), [False, True])
