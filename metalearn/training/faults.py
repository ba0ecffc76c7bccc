"""Faults a run meets: non-finite steps, SIGTERM, a second process on the same workdir.

- Non-finite steps (`NonfiniteSteps`): with `on_nonfinite="raise"` the first
  one stops the run (`FloatingPointError`); with `"skip"` each is reported in
  one line and counted, and the run stops (`SkippedStepsError`) once more than
  `max_skipped_fraction` of its steps were skipped.
- SIGTERM (`StopOnSigterm`): the loop stops at the next completed step, saves
  a checkpoint there and raises `Preempted`; running again resumes from it.
- Two processes on one workdir (`WorkdirLock`): `<workdir>/lock` holds the
  pid and host of the process training there; a second one is refused with
  `WorkdirLockedError`. A lock left by a process that is no longer running on this
  host is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from typing import Any

import numpy as np

LOCK_NAME = "lock"


class SkippedStepsError(FloatingPointError):
  """More than `max_skipped_fraction` of a run's steps were non-finite and skipped."""


class Preempted(Exception):  # noqa: N818 (a stop, not an error)
  """The run stopped on SIGTERM after saving a checkpoint at `step`; a re-run resumes there.

  Attributes:
    step: the completed step the run stopped at (its checkpoint's step).
    workdir: the run's folder.
  """

  def __init__(self, step: int, workdir: str):
    super().__init__(
      f"stopped by SIGTERM at step {step}, checkpoint saved in {workdir}; run the same "
      "command again to resume from it"
    )
    self.step, self.workdir = step, workdir


class WorkdirLockedError(RuntimeError):
  """Another process is training in this workdir."""


def _fmt(value: Any) -> str:
  return f"{float(value):.4g}"


class NonfiniteSteps:
  """Checks each step's metrics for a non-finite meta-loss or gradient and counts skips.

  Args:
    mode: `"raise"` or `"skip"` (`meta_train`'s `on_nonfinite`).
    max_skipped_fraction: the run stops once more than this fraction of its
      `num_steps` steps were skipped.
    num_steps: the run's total steps.
    skipped: steps skipped before this process started (a resumed run).
    name: the learner's name, the prefix of every line.
    workdir: the run's folder (named in messages).
    log: where the line of each skipped step goes.
  """

  def __init__(
    self,
    mode: str,
    *,
    max_skipped_fraction: float,
    num_steps: int,
    skipped: int,
    name: str,
    workdir: str,
    log,
  ):
    self.mode, self.max_fraction, self.num_steps = mode, max_skipped_fraction, num_steps
    self.skipped, self.name, self.workdir, self.log = skipped, name, workdir, log

  def check(self, index: int, metrics: dict[str, np.ndarray], checkpoint: int | None) -> None:
    """Checks the metrics of the step at `index` (step `index + 1` once completed).

    Args:
      index: the step's index, 0 for the run's first step.
      metrics: its metrics (host scalars), with `nonfinite` 1 for a skipped update.
      checkpoint: the step of the newest checkpoint, None if there is none.

    Raises:
      FloatingPointError: in `"raise"` mode, at a non-finite step.
      SkippedStepsError: in `"skip"` mode, once too many steps were skipped.
    """
    if not metrics["nonfinite"] > 0:
      return
    step = index + 1
    values = f"loss={_fmt(metrics['loss'])}, grad_norm={_fmt(metrics['grad_norm'])}"
    if self.mode == "raise":
      raise FloatingPointError(
        f"[{self.name}] non-finite meta-loss or meta-gradient at step {step} ({values}) after "
        f"{index} completed step{'s' if index != 1 else ''}; training stopped and theta was "
        "not updated. "
        f"{self._kept(checkpoint)} To go on: lower the learning rate in a new workdir (this "
        "one refuses a changed learning rate), or skip such steps with on_nonfinite='skip' "
        f"(--config.on_nonfinite=skip) in this workdir{self._from(checkpoint)}."
      )
    self.skipped += 1
    self.log(
      f"[{self.name}] step {step} skipped: non-finite meta-loss or meta-gradient ({values}); "
      f"theta not updated ({self.skipped} skipped so far)"
    )
    if self.skipped > self.max_fraction * self.num_steps:
      raise SkippedStepsError(
        f"[{self.name}] {self.skipped} steps of the {step} so far had a non-finite meta-loss or "
        f"meta-gradient and were skipped, more than max_skipped_fraction={self.max_fraction:g} of "
        f"the run's {self.num_steps} steps: training is not converging. "
        f"{self._kept(checkpoint)} Lower the learning rate in a new workdir (this one refuses "
        "a changed learning rate)."
      )

  def _kept(self, checkpoint: int | None) -> str:
    if checkpoint is None:
      return f"No checkpoint was written in {self.workdir}, so a re-run starts from step 0."
    return f"The last good checkpoint (step {checkpoint}) in {self.workdir} is kept."

  @staticmethod
  def _from(checkpoint: int | None) -> str:
    return f", resuming from step {checkpoint}" if checkpoint is not None else ""


class StopOnSigterm:
  """While active, SIGTERM only sets `requested`; the loop stops at the next completed step.

  A context manager; outside the main thread (where Python cannot install
  signal handlers) it does nothing. The previous handler is put back on exit.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.requested = True

  def __enter__(self) -> StopOnSigterm:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


class WorkdirLock:
  """`<workdir>/lock`: taken by the process training in `workdir`, released on exit.

  A context manager. The lock file holds `{"pid", "host", "since"}`. Taking it
  fails with `WorkdirLockedError` (one line naming the workdir and the other
  process) while that process runs; a lock of a pid that no longer runs on
  this host (a killed run) is taken over with a note. A lock from another host
  is never taken over: remove the file when that host's run is known to be gone.

  Args:
    workdir: the run's folder (must exist).
    log: where the takeover note goes.
  """

  def __init__(self, workdir: str, log):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.log = log
    self._mine = json.dumps(
      {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
      }
    )
    self._held = False

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(self._mine + "\n")
    return True

  def _holder(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.loads(f.read())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):
      return {}  # unreadable (cut short): treated as held by an unknown process

  def __enter__(self) -> WorkdirLock:
    for _ in range(3):
      if self._create():
        self._held = True
        return self
      holder = self._holder()
      if holder is None:
        continue  # released in between: try again
      pid, host = holder.get("pid"), holder.get("host")
      if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        self.log(
          f"note: {self.path} was left by process {pid} on {host}, which no longer runs; "
          "taking it over"
        )
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
        continue
      since = f" since {holder['since']}" if holder.get("since") else ""
      raise WorkdirLockedError(
        f"workdir {os.path.dirname(self.path)} is in use by process {pid} on {host}{since} "
        f"(lock file {self.path}); wait for it to end or stop it, or use another workdir"
      )
    raise WorkdirLockedError(f"could not take the lock {self.path}: other processes keep taking it")

  def __exit__(self, *exc) -> None:
    if self._held and self._holder() == json.loads(self._mine):
      os.remove(self.path)
    self._held = False
