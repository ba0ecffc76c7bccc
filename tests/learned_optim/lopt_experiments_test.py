"""The lopt family through experiments/meta_train.py: smoke configs, the comparison, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import lopt_mnist, lopt_quadratic
from experiments.families import lopt
from experiments.train import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "experiments", "configs")


def _binary(*args, env=None):
  return subprocess.run(
    [sys.executable, "-m", "experiments.meta_train", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
  )


def test_quadratic_smoke_through_the_binary(tmp_path):
  """`:pes,smoke`: the estimator named by the config file's argument (tbptt: the MNIST smoke)."""
  estimator = "pes"
  workdir = tmp_path / "run"
  out = _binary(f"--config={CONFIGS}/lopt_quadratic.py:{estimator},smoke", f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads((workdir / "comparison.json").read_text())
  assert report["step"] == 4 and report["optimizee"] == "quadratic"
  assert set(report["table"]) == {"lstm", "adam", "nesterov"}  # the smoke variant's two
  assert report["grid"] == [0.01, 0.1, 1.0]
  for name, tuned in report["tuned"].items():  # the chosen rate is the grid's least mean loss
    # A diverged rate scores inf, which strict JSON writes as null.
    scores = {float(k): np.inf if v is None else v for k, v in tuned["grid_mean_loss"].items()}
    assert tuned["learning_rate"] == min(scores, key=scores.get), name
  adam = report["table"]["adam"]
  assert set(adam) == {"loss@10", "loss@20", "steps_to_reference"}
  assert adam["loss@10"]["n"] == 8 and adam["steps_to_reference"] <= 10
  # The LSTM's row is meta_train's held-out evaluation of the same tasks.
  evaluated = json.loads((workdir / "eval.json").read_text())["metrics"]
  np.testing.assert_allclose(
    report["table"]["lstm"]["loss@20"]["mean"], evaluated["loss@20"]["mean"], rtol=1e-5
  )
  assert (workdir / "loss_curves.png").stat().st_size > 10_000
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["learner"]["estimator"] == estimator


def _write_fake_mnist(directory, n=64):
  import gzip
  import struct

  rng = np.random.default_rng(0)
  for name, array in (
    ("train-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
    ("train-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8)),
  ):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(
      f">{array.ndim}I", *array.shape
    )
    with gzip.open(os.path.join(directory, name), "wb") as f:
      f.write(header + array.tobytes())


def test_mnist_smoke_through_the_binary_reads_idx_files_from_the_environment(tmp_path):
  data = tmp_path / "mnist"
  data.mkdir()
  _write_fake_mnist(str(data))
  workdir = tmp_path / "run"
  out = _binary(
    f"--config={CONFIGS}/lopt_mnist.py:smoke",
    f"--workdir={workdir}",
    env={"METALEARN_MNIST_DIR": str(data)},
  )
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads((workdir / "comparison.json").read_text())
  assert report["optimizee"] == "mnist" and report["step"] == 2
  assert set(report["table"]["lstm"]) == {"loss@4", "loss@6", "steps_to_reference"}
  assert report["grid"] == [0.01, 1.0]
  assert all(np.isfinite(v) for v in report["mean_curves"]["adam"])


def test_a_missing_mnist_directory_is_one_line(tmp_path):
  out = _binary(
    f"--config={CONFIGS}/lopt_mnist.py:smoke",
    f"--workdir={tmp_path / 'run'}",
    f"--config.mnist_dir={tmp_path / 'nowhere'}",
  )
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith("error: MNIST directory")


@pytest.mark.parametrize(
  ("field", "value", "fragment"),
  [
    ("optimizee", "cifar", "--config.optimizee='cifar': choose one of quadratic, mnist"),
    ("baselines", ("rmsprop",), "must include adam"),
    ("lr_grid", (1.0, 0.1, 2), "0 < low <= high"),
    ("eval_steps", (), "--config.eval_steps=()"),
  ],
)
def test_bad_fields_are_named(tmp_path, field, value, fragment):
  config = lopt_quadratic.get_config("smoke")
  config.unlock()
  config[field] = value
  with pytest.raises(ConfigError, match=None) as e:
    lopt.validate(config, str(tmp_path / "run"))
  assert fragment in str(e.value)
  assert not (tmp_path / "run").exists()


def test_bad_learner_settings_are_named(tmp_path):
  config = lopt_quadratic.get_config("es,smoke")
  assert config.learner.estimator == "es"
  config.learner.truncation = 3
  with pytest.raises(ConfigError, match="must be a multiple of truncation"):
    lopt.validate(config, str(tmp_path))
  config = lopt_mnist.get_config("pes")
  config.learner.num_pairs = 0
  with pytest.raises(ConfigError, match="num_pairs must be an int >= 1"):
    lopt.validate(config, str(tmp_path))
  with pytest.raises(ValueError, match="unknown config argument 'adam'"):
    lopt_quadratic.get_config("adam")
