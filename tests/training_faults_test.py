"""Faults: skipped and diverging steps, strict JSON, SIGTERM, a locked workdir, a full disk.

Library behaviour is tested on `meta_train` directly; what a user sees (one
line `error: ...`, exit statuses, resuming after SIGTERM) through the binary
in a subprocess, on a small sinusoid config.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from training_test import TASKS, _train  # the same small run (tests/ is on sys.path)

from metalearn import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "sinusoid.py")


def _poisoned(*bad_steps):
  """A sampler whose training batches of these step indices hold a NaN target."""

  def sample(rng, n):
    batch = TASKS.sample(rng, n)
    entropy = rng.bit_generator.seed_seq.entropy
    if n == 4 and entropy[:2] == [3, training.TRAIN_STREAM] and entropy[2] in bad_steps:
      batch.query.y[0, 0, 0] = np.nan
    return batch

  return sample


def _no_nan(name):
  raise ValueError(f"{name} in a JSON file")


def _strict_load(text):
  return json.loads(text, parse_constant=_no_nan)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


# --- on_nonfinite="skip" ------------------------------------------------------------------------


def test_skipped_steps_are_named_as_they_happen_and_counted_at_the_end(tmp_path, capsys):
  _train(tmp_path, 20, sampler=_poisoned(7), on_nonfinite="skip", verbose=True)
  out = capsys.readouterr().out
  assert "[maml] step 8 skipped: non-finite meta-loss" in out  # index 7 is the 8th step
  final = [line for line in out.splitlines() if "final evaluation" in line]
  assert len(final) == 1 and final[0].endswith("; 1 of 20 steps skipped (non-finite)")


def test_too_many_skipped_steps_fail_the_run(tmp_path):
  with pytest.raises(
    training.SkippedStepsError, match=r"max_skipped_fraction=0\.1 of the run's 20"
  ):
    _train(tmp_path, 20, sampler=_poisoned(2, 7, 11), on_nonfinite="skip")
  assert not (tmp_path / "eval.json").exists()
  # The same steps skipped are accepted below the limit.
  _train(
    tmp_path / "ok", 20, sampler=_poisoned(2, 7, 11), on_nonfinite="skip", max_skipped_fraction=0.2
  )


@pytest.mark.parametrize("fraction", [-0.1, 1.5, "0.1", True])
def test_bad_max_skipped_fraction(tmp_path, fraction):
  with pytest.raises(ValueError, match="max_skipped_fraction"):
    _train(tmp_path, 5, max_skipped_fraction=fraction)


def test_json_files_are_strict_with_counts_beside_nulls(tmp_path):
  def nan_tasks(rng, n):  # held-out tasks whose every target is NaN
    batch = TASKS.sample(rng, n)
    batch.query.y[:] = np.nan
    return batch

  _train(
    tmp_path,
    10,
    sampler=_poisoned(2),
    eval_sampler=nan_tasks,
    on_nonfinite="skip",
    max_skipped_fraction=1.0,
    log_every=1,
    eval_every=5,
  )
  rows = [_strict_load(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  skipped = next(r for r in rows if r["step"] == 3)  # the one step of this line was skipped
  assert skipped["loss"] is None and skipped["loss/nonfinite"] == 1
  assert skipped["nonfinite_steps"] == 1
  val = next(r for r in rows if "val/mse@1" in r)
  assert val["val/mse@1"] is None and val["val/mse@1/nonfinite"] == 8
  report = _strict_load((tmp_path / "eval.json").read_text())
  assert report["metrics"]["mse@1"] == {"mean": None, "ci95": None, "n": 0, "nonfinite": 12}


def test_write_json_atomic_writes_nan_as_null(tmp_path):
  path = str(tmp_path / "x.json")
  training.write_json_atomic(
    path, {"a": float("nan"), "b": [float("inf"), 1.5], "c": np.float32(2)}
  )
  assert _strict_load((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.5], "c": 2.0}


# --- on_nonfinite="raise" -----------------------------------------------------------------------


def test_divergence_without_a_checkpoint_says_none_was_written(tmp_path):
  with pytest.raises(FloatingPointError) as info:
    _train(tmp_path, 30, sampler=_poisoned(3))
  message = str(info.value)
  assert "at step 4 " in message and "after 3 completed steps" in message
  assert "No checkpoint was written" in message and "last good checkpoint" not in message
  assert "new workdir" in message and "on_nonfinite='skip'" in message


def test_divergence_after_a_checkpoint_names_its_step(tmp_path):
  with pytest.raises(FloatingPointError, match=r"last good checkpoint \(step 20\)") as info:
    _train(tmp_path, 30, sampler=_poisoned(23))
  assert "at step 24 " in str(info.value) and "resuming from step 20" in str(info.value)


# --- workdir lock -------------------------------------------------------------------------------


def _write_lock(workdir, pid, host=None):
  workdir.mkdir(parents=True, exist_ok=True)
  lock = {"pid": pid, "host": host or socket.gethostname(), "since": "2026-01-01 00:00:00"}
  (workdir / "lock").write_text(json.dumps(lock))


def test_second_process_on_a_workdir_is_refused(tmp_path):
  _write_lock(tmp_path, os.getppid())  # a process that runs: pytest's parent
  with pytest.raises(training.WorkdirLockedError, match=f"in use by process {os.getppid()} on "):
    _train(tmp_path, 5)
  assert sorted(os.listdir(tmp_path)) == ["lock"], "nothing touched"


def test_lock_of_another_host_is_not_taken_over(tmp_path):
  _write_lock(tmp_path, 1, host="some-other-host")
  with pytest.raises(training.WorkdirLockedError, match="on some-other-host"):
    _train(tmp_path, 5)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  _write_lock(tmp_path, gone.pid)
  _train(tmp_path, 5, verbose=True)
  assert f"left by process {gone.pid}" in capsys.readouterr().out
  assert not (tmp_path / "lock").exists(), "released at the end"


def test_lock_is_released_when_the_run_fails(tmp_path):
  with pytest.raises(FloatingPointError):
    _train(tmp_path, 30, sampler=_poisoned(3))
  assert not (tmp_path / "lock").exists()


# --- disk full ----------------------------------------------------------------------------------


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  original = ocp.StandardCheckpointHandler.async_save

  async def fails_at_step_20(self, directory, *args, **kwargs):
    if "20.orbax-checkpoint-tmp" in str(directory):
      (directory / "partial").write_bytes(b"half a checkpoint")
      raise OSError(errno.ENOSPC, "No space left on device")
    return await original(self, directory, *args, **kwargs)

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", fails_at_step_20)
  with pytest.raises(training.CheckpointWriteError) as info:
    _train(tmp_path, 30)
  message = str(info.value)
  assert "checkpoint at step 20" in message and "No space left on device" in message
  assert "the checkpoint at step 10 is kept and a re-run resumes from it" in message
  assert "\n" not in message
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]
  monkeypatch.undo()
  resumed = _train(tmp_path, 30)
  reference = _train(tmp_path / "reference", 30)
  for a, b in zip(_leaves(reference.state), _leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(a, b)
  assert resumed.eval_summary == reference.eval_summary


# --- theta alone --------------------------------------------------------------------------------


def test_latest_theta_restores_theta_without_the_optimizer(tmp_path):
  result = _train(tmp_path, 20)
  theta = result.state.theta
  template = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), theta)
  restored = training.latest_theta(str(tmp_path), template)
  for a, b in zip(_leaves(theta), _leaves(restored), strict=True):
    np.testing.assert_array_equal(a, b)
  wrong = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((*a.shape, 2), a.dtype), theta)
  with pytest.raises((ValueError, FileNotFoundError)):
    training.latest_theta(str(tmp_path), wrong)
  with pytest.raises(FileNotFoundError):
    training.latest_theta(str(tmp_path / "nothing"), template)


# --- through the binary -------------------------------------------------------------------------

SMALL = ("--config.baseline=False", "--config.hidden=8,8", "--config.num_eval_tasks=20")


def _binary_args(workdir, *args):
  return [
    sys.executable,
    *("-m", "experiments.meta_train", f"--config={CONFIG}:smoke", f"--workdir={workdir}"),
    *SMALL,
    *args,
  ]


def _env():
  return {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def _binary(workdir, *args):
  return subprocess.run(
    _binary_args(workdir, *args), cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env()
  )


def _one_error_line(out):
  assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
  errors = [line for line in out.stderr.splitlines() if line.strip()]
  assert len(errors) == 1 and errors[0].startswith("error: "), out.stderr[-3000:]
  return errors[0]


def test_binary_divergence_is_one_error_line(tmp_path):
  line = _one_error_line(_binary(tmp_path / "run", "--config.outer_lr=1e30"))
  assert "non-finite meta-loss or meta-gradient at step 2 " in line
  assert "No checkpoint was written" in line


def test_binary_too_many_skipped_steps_is_one_error_line(tmp_path):
  out = _binary(tmp_path / "run", "--config.outer_lr=1e30", "--config.on_nonfinite=skip")
  line = _one_error_line(out)
  assert "max_skipped_fraction=0.1" in line
  assert "[maml] step 2 skipped" in out.stdout


def test_binary_locked_workdir_is_one_error_line(tmp_path):
  _write_lock(tmp_path / "run", os.getppid())
  line = _one_error_line(_binary(tmp_path / "run"))
  assert f"in use by process {os.getppid()}" in line and str(tmp_path / "run") in line


def test_binary_unwritable_workdir_is_one_error_line(tmp_path):
  workdir = tmp_path / "run"
  (workdir / "metrics.jsonl").mkdir(parents=True)  # metrics.jsonl cannot be written
  line = _one_error_line(_binary(workdir))
  assert f"cannot write in --workdir={workdir}" in line


def test_binary_verbose_shows_the_traceback(tmp_path):
  out = _binary(tmp_path / "run", "--config.outer_lr=1e30", "--verbose")
  assert out.returncode == 1 and "Traceback" in out.stderr and "FloatingPointError" in out.stderr


def _rows(workdir):
  rows = [_strict_load(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for row in rows:
    row.pop("steps_per_sec", None)  # wall-clock: the one thing allowed to differ
  return rows


def test_sigterm_saves_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path):
  # SIGTERM while the first call compiles: the run stops after it, at step 5,
  # between two metrics lines (log_every=10) and two checkpoints.
  args = ("--config.num_steps=40", "--config.log_every=10", "--config.checkpoint_every=20")
  reference = subprocess.Popen(
    _binary_args(tmp_path / "reference", *args), cwd=ROOT, env=_env(), text=True,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
  )  # fmt: skip
  workdir = tmp_path / "stopped"
  proc = subprocess.Popen(
    _binary_args(workdir, *args), cwd=ROOT, env=_env(), text=True,
    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
  )  # fmt: skip
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if "compiling..." in line:
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, "".join(seen) + out + err
  assert err.strip().splitlines()[-1] == (
    f"stopped by SIGTERM at step 5, checkpoint saved in {workdir}; run the same command again "
    "to resume from it"
  )
  assert sorted(os.listdir(workdir / "checkpoints")) == ["5"]
  assert not (workdir / "lock").exists()

  resumed = _binary(workdir, *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from the checkpoint at step 5" in resumed.stdout
  assert reference.wait(timeout=300) == 0
  assert (workdir / "eval.json").read_bytes() == (tmp_path / "reference" / "eval.json").read_bytes()
  assert _rows(workdir) == _rows(tmp_path / "reference")
  assert not (workdir / "unlogged_steps.json").exists()
