"""The MAML-RL navigation config's smoke variant through the binary (experiments/meta_train.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np


def test_smoke_config_through_the_binary(tmp_path):
  workdir = tmp_path / "run"
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.meta_train",
      "--config=experiments/configs/maml_rl_navigation.py:smoke",
      f"--workdir={workdir}",
    ],
    cwd=root,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert (workdir / "eval.json").exists()
  summary = json.loads((workdir / "eval.json").read_text())
  for k in range(4):
    assert np.isfinite(summary["metrics"][f"return@{k}"]["mean"])
