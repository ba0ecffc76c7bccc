"""Multi-host: two real processes under `jax.distributed` equal one process with as many devices.

Two processes on localhost, each with 2 simulated CPU devices, run the binary
with `--coordinator_address/--num_processes/--process_id` (JAX's
multi-controller runtime, CPU collectives over gloo); one process with 4
simulated devices runs the same config with `sample_shards=2`, which draws the
same tasks as the two processes drawing one share each. Both must end with the
same parameters and evaluation, and only process 0 may write logs and metrics.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import meta_train, train
from experiments.configs import sinusoid
from metalearn import episodes as ep
from metalearn import training
from metalearn.data.sinusoid import Sinusoid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "sinusoid.py")
OVERRIDES = {
  "baseline": "False",
  "num_steps": "6",
  "meta_batch_size": "8",
  "hidden": "8,8",
  "checkpoint_every": "3",
  "eval_every": "3",
  "log_every": "3",
  "num_val_tasks": "6",  # evaluation batches that do not divide over 4 devices: padded
  "num_eval_tasks": "13",
}


def _start(workdir, devices: int, *flags: str) -> subprocess.Popen:
  env = {
    **os.environ,
    "PYTHONPATH": ROOT,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
  }
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)
  args = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  return subprocess.Popen(
    [
      sys.executable,
      *("-m", "experiments.meta_train", f"--config={CONFIG}:smoke", f"--workdir={workdir}"),
      *args,
      *flags,
    ],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-5000:]
  return outs


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _theta(workdir):
  config = sinusoid.get_config("smoke")
  with config.unlocked():
    config.hidden = (8, 8)
  example = ep.task(Sinusoid(shots=10, queries=10).sample(np.random.default_rng(0), 1), 0)
  theta = training.restore_theta(str(workdir), train.build_learner(config), example)
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(theta)]


def test_two_processes_equal_one_process_with_as_many_devices(tmp_path):
  port = _free_port()
  two = [
    _start(
      tmp_path / "two",
      2,
      f"--coordinator_address=localhost:{port}",
      "--num_processes=2",
      f"--process_id={i}",
    )
    for i in range(2)
  ]
  one = _start(tmp_path / "one", 4, "--config.sample_shards=2")
  out0, out1, _ = _finish([*two, one])

  assert "process 0/2: 2 local, 4 global cpu devices" in out0
  assert "process 1/2: 2 local, 4 global cpu devices" in out1
  assert "4 cpu device(s) of 2 processes" in out0 and "[maml] step 6/6" in out0
  assert "[maml]" not in out1 and "wrote" not in out1, "only process 0 logs and writes"
  for a, b in zip(_theta(tmp_path / "one"), _theta(tmp_path / "two"), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  reports = [json.loads((tmp_path / d / "eval.json").read_text()) for d in ("one", "two")]
  assert reports[0]["step"] == reports[1]["step"] == 6
  for name, m in reports[0]["metrics"].items():
    other = reports[1]["metrics"][name]
    assert m["n"] == other["n"] == 13
    np.testing.assert_allclose(m["mean"], other["mean"], rtol=1e-5)
  rows = [
    json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
  ]
  assert [r["step"] for r in rows if "loss" in r] == [3, 6], "one writer: no duplicated rows"
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["3", "6"]
  assert (tmp_path / "two" / "sinusoid.png").exists()
  assert not [f for f in os.listdir(tmp_path / "two") if f.startswith(".shared-")]


# --- when the binary calls jax.distributed.initialize ---


def test_single_process_by_default():
  assert meta_train.distributed_args("auto", None, None, None, {}) is None
  assert meta_train.distributed_args("off", None, None, None, {"SLURM_NTASKS": "4"}) is None


def test_flags_and_environment_turn_it_on():
  args = meta_train.distributed_args("auto", "h:1", 2, 1, {})
  assert args == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
  env = {"JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert meta_train.distributed_args("auto", None, None, None, env) == {
    "coordinator_address": "h:2",
    "num_processes": 4,
    "process_id": 3,
  }
  # A flag wins over its variable.
  assert meta_train.distributed_args("auto", None, None, 0, env)["process_id"] == 0


def test_managed_launchers_are_detected():
  srun = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8"}
  assert meta_train.distributed_args("auto", None, None, None, srun) == {}
  # An allocation that runs one process (no srun step of several tasks) stays single.
  salloc = {"SLURM_NTASKS": "8"}
  assert meta_train.distributed_args("auto", None, None, None, salloc) is None
  one_task = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "8"}
  assert meta_train.distributed_args("auto", None, None, None, one_task) is None
  assert meta_train.distributed_args("auto", None, None, None, {"OMPI_COMM_WORLD_SIZE": "2"}) == {}
  # `on` always initializes; JAX detects the rest (TPU-VM pods, SLURM, Open MPI).
  assert meta_train.distributed_args("on", None, None, None, {}) == {}


@pytest.mark.parametrize(
  "mode, env, match",
  [
    ("off", {"JAX_COORDINATOR_ADDRESS": "h:1"}, "coordinator_address"),
    ("auto", {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES"),
    ("sometimes", {}, "--distributed"),
  ],
)
def test_bad_settings_are_refused(mode, env, match):
  with pytest.raises(ValueError, match=match):
    meta_train.distributed_args(mode, None, None, None, env)


def test_binary_refuses_contradictory_flags(tmp_path):
  proc = _start(tmp_path / "run", 1, "--distributed=off", "--num_processes=2")
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode != 0 and "error: --distributed=off" in out
  assert not (tmp_path / "run").exists()
