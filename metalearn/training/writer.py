"""The metric writer (terminal, `metrics.jsonl`, TensorBoard) and strict JSON files.

Every JSON file a run writes is strict JSON: a non-finite number (NaN, ±inf)
is written as `null`, never as the `NaN` / `Infinity` literals that strict
parsers reject; the callers write the count of such values beside them
(`nonfinite` in evaluation summaries, `<name>/nonfinite` in metrics lines).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from typing import Any

import numpy as np


def strict(obj: Any) -> Any:
  """`obj` with every non-finite float (also numpy scalars) replaced by None."""
  if isinstance(obj, dict):
    return {k: strict(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [strict(v) for v in obj]
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if hasattr(obj, "dtype") and getattr(obj, "shape", None) == ():  # numpy scalar
    return strict(obj.item())
  return obj


def dumps(obj: Any, **kwargs: Any) -> str:
  """`json.dumps` of `strict(obj)`, refusing any NaN or infinity that is left."""
  return json.dumps(strict(obj), allow_nan=False, **kwargs)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes `obj` as strict JSON to `path` through a temporary file and a rename."""
  text = dumps(obj, indent=2, sort_keys=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def kept_rows(path: str, resume_step: int) -> list[str]:
  """The lines of a `metrics.jsonl` a run resumed at `resume_step` keeps.

  Those of later steps go, and so does a final evaluation (`eval/` metrics)
  at `resume_step`, which the resumed run does again; a line cut short is
  dropped too.
  """
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [line for line in f if _kept(line, resume_step)]


def last_values(path: str, resume_step: int) -> dict[str, Any]:
  """name -> the latest value of each metric in the lines `kept_rows` keeps."""
  last: dict[str, Any] = {}
  for line in kept_rows(path, resume_step):
    last.update(json.loads(line))
  return last


class MetricWriter:
  """Writes scalars to the terminal, `<workdir>/metrics.jsonl` and TensorBoard.

  Args:
    workdir: run folder.
    resume_step: when resuming, lines and events after this step are dropped
      so the logs read as one uninterrupted run (a line cut short by a killed
      job is dropped too).
    verbose: print to the terminal.
    tensorboard: write TensorBoard events under `<workdir>/tensorboard`.

  Attributes:
    last: name -> the latest value of each metric in the lines kept on resume
      (empty on a fresh run), e.g. the count of skipped non-finite steps.
  """

  def __init__(
    self,
    workdir: str,
    *,
    resume_step: int | None = None,
    verbose: bool = True,
    tensorboard: bool = True,
  ):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.verbose = verbose
    self.last: dict[str, Any] = {}
    if resume_step is not None and os.path.exists(self.path):
      kept = kept_rows(self.path, resume_step)
      for line in kept:
        self.last.update(json.loads(line))
      with open(self.path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(self.path + ".tmp", self.path)
    elif resume_step is None and os.path.exists(self.path):
      os.remove(self.path)
    self._file = open(self.path, "a")  # noqa: SIM115 (closed in close())
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step)

  def write(self, step: int, metrics: dict[str, Any], *, prefix: str = "") -> None:
    """Records `metrics` at `step`; names get `prefix` (e.g. "val/").

    A non-finite value goes to `metrics.jsonl` as `null` (the caller adds its
    count under another name) and to TensorBoard as it is.
    """
    row = {"step": int(step), **{prefix + k: float(v) for k, v in metrics.items()}}
    self._file.write(dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(k.replace("@", "_at_"), v, step)
      self._tb.flush()

  def log(self, message: str) -> None:
    """Prints one progress line to the terminal (when verbose)."""
    if self.verbose:
      print(message, file=sys.stdout, flush=True)

  def close(self) -> None:
    """Closes the files; safe to call twice."""
    if not self._file.closed:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class NullWriter:
  """What processes other than 0 write: nothing."""

  last: dict[str, Any] = {}  # noqa: RUF012 (never written)

  def write(self, step: int, metrics: dict[str, Any], *, prefix: str = "") -> None:
    del step, metrics, prefix

  def log(self, message: str) -> None:
    del message

  def close(self) -> None:
    """Nothing was opened."""


def _kept(line: str, resume_step: int) -> bool:
  step = _step_of(line)
  if step == resume_step:
    return not any(k.startswith("eval/") for k in json.loads(line))
  return step < resume_step


def _step_of(line: str) -> float:
  """The step of a metrics.jsonl line; a line cut short by a killed job counts as never."""
  try:
    return json.loads(line)["step"] if line.endswith("\n") else math.inf
  except (ValueError, KeyError, TypeError):
    return math.inf


UNLOGGED_NAME = "unlogged_steps.json"


def save_unlogged(
  workdir: str, step: int, skipped: int, unlogged: list[tuple[int, dict[str, Any]]]
) -> None:
  """Keeps the metrics of steps not yet in a metrics line, for a checkpoint at `step`.

  A run stopped between two metrics lines saves them so that the run resumed
  from that checkpoint writes the same next line as a run never stopped.

  Args:
    workdir: the run's folder; the file is `<workdir>/unlogged_steps.json`.
    step: the checkpoint's step.
    skipped: skipped steps up to `step`.
    unlogged: `(step index, {name: numpy scalar})` for each step since the
      last metrics line.
  """
  dtypes = {k: str(np.asarray(v).dtype) for _, m in unlogged[-1:] for k, v in m.items()}
  steps = [[i, {k: float(v) for k, v in m.items()}] for i, m in unlogged]
  write_json_atomic(
    os.path.join(workdir, UNLOGGED_NAME),
    {"step": step, "skipped": skipped, "dtypes": dtypes, "steps": steps},
  )


def load_unlogged(workdir: str, step: int) -> tuple[int, list[tuple[int, dict[str, Any]]]] | None:
  """`(skipped, unlogged)` as `save_unlogged` kept them for the checkpoint at `step`, else None."""
  path = os.path.join(workdir, UNLOGGED_NAME)
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return None
  if saved.get("step") != step:
    return None
  dtypes = saved["dtypes"]
  unlogged = [
    (int(i), {k: np.asarray(math.nan if v is None else v, dtypes[k])[()] for k, v in m.items()})
    for i, m in saved["steps"]
  ]
  return int(saved["skipped"]), unlogged


def remove_unlogged(workdir: str) -> None:
  """Removes `<workdir>/unlogged_steps.json` if there is one."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(workdir, UNLOGGED_NAME))
