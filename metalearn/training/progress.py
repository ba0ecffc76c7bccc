"""The progress line: steps done, loss, step rate (training time only) and ETA."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any


def fmt_time(seconds: float) -> str:
  """`1h05m` from an hour on, else `4m07s`."""
  seconds = int(seconds)
  return (
    f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 3600
    else (f"{seconds // 60}m{seconds % 60:02d}s")
  )


def fmt_rate(steps_per_sec: float) -> str:
  """`1361 steps/s`, or `4.1 s/step` for runs slower than a step a second."""
  if steps_per_sec >= 1 or steps_per_sec <= 0:
    return f"{steps_per_sec:.0f} steps/s"
  return f"{1 / steps_per_sec:.1f} s/step"


def fmt_summary(summary: dict[str, dict[str, Any]]) -> str:
  """`mse@0=1.2±0.1  mse@1=...` from an evaluation summary."""
  return "  ".join(f"{k}={v['mean']:.4g}±{v['ci95']:.2g}" for k, v in sorted(summary.items()))


class Progress:
  """Times training (the first, compiling call apart; pauses excluded) and formats its line.

  Args:
    name: the learner's name, the prefix of every line.
    num_steps: the run's total steps.
    start: the step the run starts (or resumes) at.
  """

  def __init__(self, name: str, num_steps: int, start: int):
    self.name, self.num_steps, self.start = name, num_steps, start
    self._t0, self._timed_from = time.time(), start

  def first_call_done(self, done: int, size: int) -> str:
    """Restarts the clock after the first call; returns the line saying how long it took."""
    what = "step" if size == 1 else f"call of {size} steps"
    line = f"[{self.name}] first {what} (compile included) took {time.time() - self._t0:.1f}s"
    self._t0, self._timed_from = time.time(), done
    return line

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Time spent inside (validation, checkpoints) does not count as training."""
    paused = time.time()
    try:
      yield
    finally:
      self._t0 += time.time() - paused

  def rate(self, step: int) -> float:
    """Steps per second of training since the first call."""
    return (step - self._timed_from) / max(time.time() - self._t0, 1e-9)

  def line(self, step: int, mean: dict[str, float], rate: float) -> str:
    """`[maml] step 200/1000 (20%) loss=... grad_norm=... 1361 steps/s ETA 0m01s`."""
    eta = (self.num_steps - step) / rate if rate > 0 else math.inf
    return (
      f"[{self.name}] step {step}/{self.num_steps} "
      f"({100 * step / max(self.num_steps, 1):.0f}%) "
      f"loss={mean['loss']:.4g} grad_norm={mean['grad_norm']:.3g} "
      f"{fmt_rate(rate)} ETA {fmt_time(eta) if math.isfinite(eta) else '?'}"
    )
