"""Preemption: a run killed with SIGKILL and started again ends as if never stopped.

The binary is started as a subprocess and killed at two moments: as soon as
anything appears under `checkpoints/` (most often orbax's temporary folder of
the first checkpoint being written), and later mid-run with complete
checkpoints behind it. The same command then runs to the end; its final
parameters, `eval.json` and `metrics.jsonl` must equal those of an
uninterrupted run with the same seed, bitwise (CPU).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax

from experiments import train
from experiments.configs import sinusoid
from metalearn import algorithms, evaluation, training
from metalearn import episodes as ep
from metalearn.data.sinusoid import Sinusoid
from metalearn.models import MLP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "sinusoid.py")
NUM_STEPS = 200
OVERRIDES = {
  "baseline": "False",
  "num_steps": str(NUM_STEPS),
  "hidden": "8,8",
  "checkpoint_every": "10",
  "eval_every": "100",
  "log_every": "10",
  "num_val_tasks": "10",
  "num_eval_tasks": "20",
}


def _start(workdir) -> subprocess.Popen:
  args = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  return subprocess.Popen(
    [
      sys.executable,
      *("-m", "experiments.meta_train", f"--config={CONFIG}:smoke", f"--workdir={workdir}"),
      *args,
    ],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _complete_steps(checkpoints) -> list[int]:
  names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
  return sorted(int(n) for n in names if n.isdigit())


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
  """SIGKILLs `proc` as soon as `ready()` holds (polled every millisecond)."""
  deadline = time.time() + timeout
  while not ready():
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()
    assert time.time() < deadline, "timed out waiting to kill the run"
    time.sleep(0.001)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL


def _theta(workdir):
  config = sinusoid.get_config("smoke")
  with config.unlocked():
    config.hidden = (8, 8)
  example = ep.task(Sinusoid(shots=10, queries=10).sample(np.random.default_rng(0), 1), 0)
  theta = training.restore_theta(str(workdir), train.build_learner(config), example)
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(theta)]


def _rows(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for row in rows:
    row.pop("steps_per_sec", None)  # wall-clock: the one thing allowed to differ
  return rows


def test_sigkill_and_rerun_equals_uninterrupted_run(tmp_path):
  reference = _start(tmp_path / "reference")  # runs alongside the killed ones
  workdir = tmp_path / "killed"
  checkpoints = workdir / "checkpoints"

  # 1. Killed as soon as a checkpoint starts to be written.
  _kill_when(_start(workdir), lambda: os.path.isdir(checkpoints) and os.listdir(checkpoints))
  # 2. Started again, killed mid-run with at least two newer complete checkpoints.
  first = _complete_steps(checkpoints)
  _kill_when(
    _start(workdir),
    lambda: len([s for s in _complete_steps(checkpoints) if s > max(first, default=0)]) >= 2,
  )
  killed_at = _complete_steps(checkpoints)[-1]
  assert 0 < killed_at < NUM_STEPS
  # 3. Started again, to the end.
  resumed = _start(workdir)
  out = resumed.communicate(timeout=240)[0]
  assert resumed.returncode == 0, out[-3000:]
  assert f"resuming from the checkpoint at step {killed_at}" in out, out[-3000:]
  ref_out = reference.communicate(timeout=240)[0]
  assert reference.returncode == 0, ref_out[-3000:]

  for a, b in zip(_theta(tmp_path / "reference"), _theta(workdir), strict=True):
    np.testing.assert_array_equal(a, b)
  assert json.loads((workdir / "eval.json").read_text()) == json.loads(
    (tmp_path / "reference" / "eval.json").read_text()
  )
  assert _rows(workdir) == _rows(tmp_path / "reference")
  assert not [n for n in os.listdir(checkpoints) if "tmp" in n], "partial checkpoints cleaned up"
  assert len(_complete_steps(checkpoints)) == 3  # max_to_keep


def _poisoned(bad_step):
  """A sampler whose batch for training step `bad_step` holds a NaN target."""
  tasks = Sinusoid(shots=5, queries=5)

  def sample(rng, n):
    batch = tasks.sample(rng, n)
    if n == 4 and rng.bit_generator.seed_seq.entropy == [3, training.TRAIN_STREAM, bad_step]:
      batch.query.y[0, 0, 0] = np.nan
    return batch

  return sample


def _train(workdir, num_steps, sampler):
  learner = algorithms.maml(MLP(hidden=(8,)), inner_lr=0.01, inner_steps=1)
  return training.meta_train(
    learner,
    sampler,
    evaluate=evaluation.regression(
      evaluation.curve(algorithms.maml, (0, 1, 10), MLP(hidden=(8,)), inner_lr=0.01)
    ),
    optimizer=optax.adam(1e-3),
    num_steps=num_steps,
    meta_batch_size=4,
    workdir=str(workdir),
    seed=3,
    eval_every=0,
    checkpoint_every=10,
    log_every=5,
    num_val_tasks=4,
    num_eval_tasks=4,
    on_nonfinite="skip",
    verbose=False,
  )


def test_skipped_step_count_survives_resume(tmp_path):
  sampler = _poisoned(3)
  _train(tmp_path / "full", 20, sampler)
  _train(tmp_path / "split", 10, sampler)
  _train(tmp_path / "split", 20, sampler)
  reports = [json.loads((tmp_path / d / "eval.json").read_text()) for d in ("full", "split")]
  assert reports[0]["nonfinite_steps"] == reports[1]["nonfinite_steps"] == 1
  assert reports[0] == reports[1]


def test_cut_short_metrics_line_is_dropped_on_resume(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')
  writer = training.MetricWriter(str(tmp_path), resume_step=10, verbose=False, tensorboard=False)
  writer.close()
  assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 5, "loss": 1.0}\n'
  assert writer.last == {"step": 5, "loss": 1.0}
