"""Helpers of the benchmark scripts that do not measure anything themselves."""

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
