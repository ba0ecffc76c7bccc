"""launch/: the scripts parse (and pass shellcheck where installed) and run end to end.

The TPU-VM script runs against a stand-in `gcloud` that executes each worker's
command on this machine, and the SLURM script against a stand-in `srun` that
starts its tasks here with SLURM's variables, so JAX's own SLURM detection
joins them. The Colab notebook's code cells run on CPU with the smoke config.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
NOTEBOOK = os.path.join(LAUNCH, "colab_tpu.ipynb")
SCRIPTS = [
  os.path.join(LAUNCH, "tpu_vm_pod.sh"),
  os.path.join(LAUNCH, "slurm_gpu.sbatch"),
  os.path.join(ROOT, "benchmarks", "run_gpu_scaling.sh"),
]
SMOKE = "experiments/configs/sinusoid.py:smoke"
FAST = ["--config.baseline=False", "--config.num_steps=4", "--config.num_eval_tasks=8"]


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_", "XLA_"))}
  return {**env, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg", **extra}


def _executable(path, text: str) -> str:
  with open(path, "w") as f:
    f.write(text)
  os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
  return str(path)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _fake_venv(path) -> str:
  """A `bin/python` that is this interpreter, where the scripts expect their venv."""
  os.makedirs(os.path.join(path, "bin"))
  _executable(os.path.join(path, "bin", "python"), f'#!/bin/sh\nexec {sys.executable} "$@"\n')
  return str(path)


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_script_parses(script):
  assert os.access(script, os.X_OK), f"{script} is not executable"
  out = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  if shutil.which("shellcheck"):
    out = subprocess.run(["shellcheck", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_tpu_vm_script_runs_on_every_worker(tmp_path):
  home, log = tmp_path / "worker0", tmp_path / "gcloud.log"
  _fake_venv(home / "metalearn-venv")
  # Stand-in gcloud: `scp SRC TPU:DEST` copies into the worker's home, `ssh
  # --command=CMD` runs CMD there as a one-process JAX job.
  fake = f"""#!/usr/bin/env python3
import os, shutil, subprocess, sys
args = sys.argv[1:]
with open({str(log)!r}, "a") as f:
  f.write(" ".join(args) + "\\n")
assert args[:3] == ["compute", "tpus", "tpu-vm"] and "--worker=all" in args, args
home = {str(home)!r}
if args[3] == "scp":
  shutil.copy(args[4], os.path.join(home, args[5].split(":", 1)[1]))
elif args[3] == "ssh":
  command = next(a.split("=", 1)[1] for a in args if a.startswith("--command="))
  env = dict(os.environ, HOME=home, JAX_COORDINATOR_ADDRESS="localhost:{_free_port()}",
             JAX_NUM_PROCESSES="1", JAX_PROCESS_ID="0")
  sys.exit(subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode)
else:
  sys.exit("unexpected gcloud call")
"""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _executable(bin_dir / "gcloud", fake)
  workdir = tmp_path / "shared" / "run"
  out = subprocess.run(
    [
      os.path.join(LAUNCH, "tpu_vm_pod.sh"),
      "--tpu=test-pod",
      "--zone=us-central2-b",
      f"--workdir={workdir}",
      f"--config={SMOKE}",
      "--",
      *FAST,
    ],
    env=_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert (home / "metalearn" / "experiments" / "meta_train.py").exists()
  report = json.loads((workdir / "eval.json").read_text())
  assert report["step"] == 4 and report["num_tasks"] == 8
  calls = log.read_text().splitlines()
  assert any(c.startswith("compute tpus tpu-vm scp") for c in calls)
  assert any("--distributed=on" in c and "experiments.meta_train" in c for c in calls)
  assert "process 0/1" in out.stdout


def test_slurm_script_runs_its_tasks(tmp_path):
  # Stand-in srun: starts SLURM_NTASKS copies of its command with the variables
  # srun sets; JAX's SLURM detection then finds coordinator, count and ids.
  fake = """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NUM_TASKS=$SLURM_NTASKS \\
    SLURM_STEP_NODELIST=localhost SLURM_STEP_NUM_NODES=1 "$@" &
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _executable(bin_dir / "srun", fake)
  workdir = tmp_path / "run"
  env = _env(
    PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    SLURM_JOB_ID="4242",
    SLURM_JOB_NAME="metalearn-test",
    SLURM_NNODES="1",
    SLURM_NTASKS="2",
    SLURM_NTASKS_PER_NODE="2",
    JAX_COORDINATOR_PORT=str(_free_port()),
    REPO=ROOT,
    VENV=_fake_venv(tmp_path / "venv"),
    CONFIG=SMOKE,
    WORKDIR=str(workdir),
  )
  out = subprocess.run(
    ["bash", os.path.join(LAUNCH, "slurm_gpu.sbatch"), *FAST, "--config.meta_batch_size=4"],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "process 0/2" in out.stdout and "process 1/2" in out.stdout
  assert "2 cpu device(s) of 2 processes" in out.stdout
  report = json.loads((workdir / "eval.json").read_text())
  assert report["step"] == 4


def test_notebook_is_valid():
  with open(NOTEBOOK) as f:
    nb = json.load(f)
  assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["language"] == "python"
  assert nb["metadata"].get("accelerator") == "TPU"
  for cell in nb["cells"]:
    assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None
  tags = [c["metadata"].get("tags", []) for c in nb["cells"]]
  assert sum("parameters" in t for t in tags) == 1


def test_notebook_runs_on_cpu_with_smoke_config(tmp_path):
  with open(NOTEBOOK) as f:
    cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
  workdir = tmp_path / "run"
  program = []
  for cell in cells:
    program.append("".join(cell["source"]))
    if "parameters" in cell["metadata"].get("tags", []):  # as papermill injects parameters
      program.append(
        f"CONFIG = {SMOKE!r}\nFLAGS = {' '.join(FAST)!r}\nWORKDIR = {str(workdir)!r}\n"
      )
  out = subprocess.run(
    [sys.executable, "-c", "\n\n".join(program)],
    cwd=ROOT,
    env=_env(PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "pip install" not in out.stdout, "installed already: nothing to fetch"
  assert "device(s): the meta-batch is sharded" in out.stdout
  assert "mse@1" in out.stdout and str(workdir / "sinusoid.png") in out.stdout
  assert "loaded maml (sinusoid)" in out.stdout and "a new task, adapted on" in out.stdout
