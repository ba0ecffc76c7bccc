"""Evaluation on held-out tasks: periodic validation and the final evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax

from metalearn import core, parallel
from metalearn.training.progress import fmt_summary

Summary = dict[str, dict[str, Any]]


def sharded(eval_step: Callable[..., Any], mesh: jax.sharding.Mesh) -> Callable[..., Any]:
  """`eval_step` jitted over `mesh`: host batches are padded to the mesh, sharded, unpadded."""
  replicated, task_sharded = parallel.replicated(mesh), parallel.task_sharded(mesh)
  jitted = jax.jit(
    eval_step, in_shardings=(replicated, task_sharded, replicated), out_shardings=replicated
  )

  def step(theta, batch, key):
    """Per-task metrics `[T]` (numpy) of a host batch."""
    n = core.num_tasks(batch)
    padded = parallel.put_global_batch(parallel.pad_tasks(batch, mesh.size), mesh)
    metrics = parallel.fetch(jitted(theta, padded, parallel.replicate(key, mesh)))
    return {k: v[:n] for k, v in metrics.items()}

  return step


def summary_row(summary: Summary) -> dict[str, float]:
  """The metrics line of a summary: each mean, and `<name>/nonfinite` where any value was."""
  row: dict[str, float] = {k: v["mean"] for k, v in summary.items()}
  row.update({f"{k}/nonfinite": v["nonfinite"] for k, v in summary.items() if v["nonfinite"]})
  return row


class HeldOut:
  """Scores theta on fixed held-out batches and records the result.

  Args:
    eval_step: from `sharded`.
    key: the evaluation PRNG key (batch i uses `fold_in(key, i)`).
    writer: the run's metric writer.
    name: the learner's name, the prefix of every line.
    stop_requested: polled between the final evaluation's batches; when it
      returns True the evaluation stops by calling `on_stop` (which raises).
    on_stop: called when a stop is requested during the final evaluation.
  """

  def __init__(
    self,
    eval_step: Callable[..., Any],
    *,
    key: jax.Array,
    writer: Any,
    name: str,
    stop_requested: Callable[[], bool] = lambda: False,
    on_stop: Callable[[], None] = lambda: None,
  ):
    self.eval_step, self.key, self.writer, self.name = eval_step, key, writer, name
    self.stop_requested, self.on_stop = stop_requested, on_stop

  def validate(self, step: int, theta: Any, batches: list[Any], num: int) -> Summary:
    """Validation at `step`: a `val/` metrics line and a terminal line."""
    summary = core.evaluate(self.eval_step, theta, batches, self.key)
    self.writer.write(step, summary_row(summary), prefix="val/")
    self.writer.log(f"[{self.name}] step {step} validation ({num} tasks): {fmt_summary(summary)}")
    return summary

  def final(self, step: int, theta: Any, batches: list[Any]) -> Summary:
    """The final evaluation at `step`: an `eval/` metrics line (the caller writes the line)."""
    summary = core.evaluate(self.eval_step, theta, self._stoppable(batches), self.key)
    self.writer.write(step, summary_row(summary), prefix="eval/")
    return summary

  def _stoppable(self, batches: Iterable[Any]) -> Iterator[Any]:
    for batch in batches:
      if self.stop_requested():
        self.on_stop()
      yield batch
