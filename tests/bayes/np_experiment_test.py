"""The GP family through the binary: smoke configs run, write their files, and reject bad flags."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(tmp_path, *args):
  return subprocess.run(
    [sys.executable, "-m", "experiments.meta_train", *args, f"--workdir={tmp_path / 'run'}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


@pytest.mark.parametrize("spec, kernel", [("cnp,smoke", "matern")])
def test_smoke_config_runs_through_meta_train(tmp_path, spec, kernel):
  proc = _run(
    tmp_path, f"--config=experiments/configs/np_gp.py:{spec}", f"--config.kernel={kernel}"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  run = tmp_path / "run"
  record = json.loads((run / "eval.json").read_text())
  assert record["step"] == 8 and record["kernel"] == kernel
  metrics = record["metrics"]
  assert metrics["kl"]["n"] == 16 and metrics["kl"]["mean"] > 0
  for p in (50, 90, 95):
    assert 0 <= metrics[f"coverage@{p}"]["mean"] <= 1
  reference = record["reference"]
  assert reference["trivial"]["kl"]["mean"] > reference["diagonal_gp"]["kl"]["mean"] > 0
  config = json.loads((run / "config.json").read_text())
  assert config["method"] == spec.split(",")[0] and config["learner"]["width"] == 16
  assert (run / "gp.png").stat().st_size > 0


def test_unknown_kernel_is_one_line(tmp_path):
  proc = _run(tmp_path, "--config=experiments/configs/np_gp.py:cnp,smoke", "--config.kernel=rbf")
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --config.kernel='rbf'")
