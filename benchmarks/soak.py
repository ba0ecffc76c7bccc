r"""Soak test of resuming: a run killed at many moments ends as a run never stopped.

  python -m benchmarks.soak [--kills=20] [--signals=SIGKILL,SIGTERM] [--num_steps=3000] \
      [--seed=0] [--out=soak.json]

A small sinusoid run of the binary (`experiments.meta_train`, MLP 8-8, the
smoke config with more steps) first runs uninterrupted as the reference. Then,
for each signal, the same command runs in a fresh workdir and is sent the
signal at `--kills` moments, started again after each; after the last one it
runs to the end. The moments, drawn from `--seed`, are of four kinds:

- `time`: a random time in the first seconds (JAX starting, the checkpoint
  being restored, the step compiling);
- `training`: a random few milliseconds after the newest complete checkpoint
  reaches the kill's target step (targets spread evenly over the run);
- `checkpoint`: from that target on, while orbax's temporary folder of a
  checkpoint exists, i.e. during a checkpoint write;
- `final` (the last fifth of the kills): after the last checkpoint, during the
  final evaluation.

The result holds, per signal, each kill (its kind, the process's exit status,
the newest complete checkpoint before it, whether a checkpoint was being
written) and whether `eval.json` is byte-identical and `metrics.jsonl`
identical except for its wall-clock `steps_per_sec` column to the
reference's. Exit status 1 when either differs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks import common

_KILLS = flags.DEFINE_integer("kills", 20, "signals sent per signal kind")
_SIGNALS = flags.DEFINE_list("signals", ["SIGKILL", "SIGTERM"], "signals to send")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 3000, "meta-steps of the run")
_SEED = flags.DEFINE_integer("seed", 0, "seeds the kill moments")
_WORKDIR = flags.DEFINE_string("workdir", None, "where the runs go (default: a temporary folder)")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "sinusoid.py")
KINDS = ("time", "training", "checkpoint", "final")


def command(workdir: str, num_steps: int) -> list[str]:
  """The binary's command line for the soaked run."""
  overrides = {
    "baseline": "False",
    "hidden": "8,8",
    "num_steps": num_steps,
    "checkpoint_every": max(num_steps // 30, 5),
    "log_every": max(num_steps // 60, 5),
    "eval_every": max(num_steps // 3, 5),
    "steps_per_call": 1,
    "num_val_tasks": 50,
    "num_eval_tasks": 500,
  }
  return [
    sys.executable,
    *("-m", "experiments.meta_train", f"--config={CONFIG}:smoke", f"--workdir={workdir}"),
    *(f"--config.{k}={v}" for k, v in overrides.items()),
  ]


def start(workdir: str, num_steps: int) -> subprocess.Popen:
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.Popen(
    command(workdir, num_steps),
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )


def complete_steps(workdir: str) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  names = os.listdir(path) if os.path.isdir(path) else []
  return sorted(int(n) for n in names if n.isdigit())


def writing_checkpoint(workdir: str) -> bool:
  path = os.path.join(workdir, "checkpoints")
  try:
    return any("orbax-checkpoint-tmp" in n for n in os.listdir(path))
  except FileNotFoundError:
    return False


def wait_for(proc: subprocess.Popen, ready, timeout: float) -> bool:
  """Polls `ready()` every millisecond; False when the process ended (or timed out) first."""
  deadline = time.time() + timeout
  while not ready():
    if proc.poll() is not None or time.time() > deadline:
      return False
    time.sleep(0.001)
  return True


def kill_once(workdir: str, num_steps: int, kind: str, target: int, sig: int, rng, startup: float):
  """Starts the run, sends `sig` at a moment of `kind`, waits for the process to end.

  `training` and `checkpoint` moments come once the newest complete checkpoint
  is at `target` or later, so that kills spread over the run; `time` moments
  fall within the first `startup` seconds (JAX starting, restoring, compiling).
  """
  before = complete_steps(workdir)
  proc = start(workdir, num_steps)
  t0 = time.time()
  reached = lambda: (complete_steps(workdir) or [0])[-1] >= target
  if kind == "time":
    delay = rng.uniform(0, startup)
    ready = wait_for(proc, lambda: time.time() - t0 > delay, 600)
  elif kind == "training":
    ready = wait_for(proc, reached, 600)
    time.sleep(rng.uniform(0, 0.05))
  elif kind == "checkpoint":
    ready = wait_for(proc, lambda: reached() and writing_checkpoint(workdir), 600)
  else:
    ready = wait_for(proc, lambda: num_steps in complete_steps(workdir), 600)
    time.sleep(rng.uniform(0, 0.5))
  during_write = writing_checkpoint(workdir)
  sent = proc.poll() is None
  if sent:
    proc.send_signal(sig)
  rc = proc.wait(timeout=600)
  return {
    "kind": kind,
    "target_step": target if kind in ("training", "checkpoint") else None,
    "signal_sent": sent,
    "moment_reached": ready,
    "seconds_after_start": round(time.time() - t0, 3),
    "checkpoint_being_written": during_write,
    "newest_checkpoint_before": before[-1] if before else None,
    "newest_checkpoint_after": (complete_steps(workdir) or [None])[-1],
    "exit_status": rc,
  }


def plan(kills: int, num_steps: int, rng) -> list[tuple[str, int]]:
  """`(kind, target step)` per kill: targets spread over the run, `final` kills last."""
  finals = max(1, kills // 5)
  kinds = [KINDS[i] for i in rng.integers(0, 3, kills - finals)] + ["final"] * finals
  targets = [num_steps * (i + 1) // (kills - finals + 1) for i in range(kills - finals)]
  return list(zip(kinds, [*targets, *[num_steps] * finals], strict=True))


def metric_rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  for row in rows:
    row.pop("steps_per_sec", None)
  return rows


def read_bytes(path: str) -> bytes | None:
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    return None


def soak(root: str, sig_name: str, kills: int, num_steps: int, rng, startup: float) -> dict:
  """Kills one run `kills` times with `sig_name`, finishes it, compares it with the reference."""
  workdir = os.path.join(root, sig_name.lower())
  sig = getattr(signal, sig_name)
  events = [
    kill_once(workdir, num_steps, kind, target, sig, rng, startup)
    for kind, target in plan(kills, num_steps, rng)
  ]
  final = subprocess.run(
    command(workdir, num_steps), cwd=ROOT, capture_output=True, text=True, timeout=600,
    env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
  )  # fmt: skip
  reference = os.path.join(root, "reference")
  eval_same = read_bytes(os.path.join(workdir, "eval.json")) == read_bytes(
    os.path.join(reference, "eval.json")
  )
  rows_same = final.returncode == 0 and metric_rows(workdir) == metric_rows(reference)
  return {
    "signal": sig_name,
    "kills": events,
    "signals_sent": sum(e["signal_sent"] for e in events),
    "sent_during_checkpoint_write": sum(
      e["signal_sent"] and e["checkpoint_being_written"] for e in events
    ),
    "sent_during_final_evaluation": sum(
      e["signal_sent"] and e["kind"] == "final" and e["moment_reached"] for e in events
    ),
    "exit_statuses": sorted({e["exit_status"] for e in events}),
    "final_exit_status": final.returncode,
    "eval_json_identical": eval_same,
    "metrics_identical_but_steps_per_sec": rows_same,
  }


def main(argv):
  del argv
  root = _WORKDIR.value or tempfile.mkdtemp(prefix="soak-")
  rng = np.random.default_rng(_SEED.value)
  t0 = time.time()
  reference = subprocess.run(
    command(os.path.join(root, "reference"), _NUM_STEPS.value), cwd=ROOT, capture_output=True,
    text=True, timeout=600,
    env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
  )  # fmt: skip
  duration = time.time() - t0
  if reference.returncode != 0:
    raise SystemExit(f"the reference run failed:\n{reference.stderr[-3000:]}")
  startup = min(duration / 2, 5.0)  # about JAX's start and the first compile on a CPU
  results = [
    soak(root, name, _KILLS.value, _NUM_STEPS.value, rng, startup) for name in _SIGNALS.value
  ]
  payload = {
    "benchmark": "soak",
    "command": "python "
    + " ".join(command("<workdir>", _NUM_STEPS.value)[1:]).replace(ROOT + os.sep, ""),
    "kills_per_signal": _KILLS.value,
    "seed": _SEED.value,
    "reference_seconds": round(duration, 2),
    "total_seconds": round(time.time() - t0, 1),
    "machine": common.machine(),
    "results": results,
  }
  for r in results:
    print(
      f"{r['signal']}: {r['signals_sent']} sent ({r['sent_during_checkpoint_write']} during a "
      f"checkpoint write, {r['sent_during_final_evaluation']} during the final evaluation); "
      f"exit statuses {r['exit_statuses']}; eval.json identical: {r['eval_json_identical']}; "
      f"metrics identical: {r['metrics_identical_but_steps_per_sec']}",
      flush=True,
    )
  common.write_json(_OUT.value, payload)
  ok = all(r["eval_json_identical"] and r["metrics_identical_but_steps_per_sec"] for r in results)
  return 0 if ok else 1


if __name__ == "__main__":
  app.run(main)
