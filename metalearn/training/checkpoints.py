"""Checkpoints: orbax save/restore of the train state under `<workdir>/checkpoints`.

A checkpoint is written to a temporary folder and renamed when complete, so a
run killed mid-save leaves the previous checkpoints as they were; a run started
again resumes from the newest one that reads back whole. A save that fails
(a full disk, a quota) stops the run with `CheckpointWriteError`, saying which
checkpoint a re-run resumes from.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from metalearn import core, parallel
from metalearn.types import PyTree


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (e.g. the disk is full); older ones are kept."""


def checkpoint_dir(workdir: str) -> str:
  """`<workdir>/checkpoints`, absolute (orbax needs absolute paths)."""
  return os.path.abspath(os.path.join(workdir, "checkpoints"))


def _manager(workdir: str, **options: Any) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    checkpoint_dir(workdir), options=ocp.CheckpointManagerOptions(**options)
  )


def _restore_newest(
  manager: ocp.CheckpointManager,
  restore: Callable[[int], Any],
  log: Callable[[str], None],
  *,
  set_aside: bool,
) -> tuple[int, Any] | None:
  """`(step, restore(step))` for the newest checkpoint that reads back, skipping broken ones.

  A checkpoint that fails to read is renamed `<step>.unreadable-<time>` (kept
  for inspection, never loaded again) when `set_aside`, so training can write
  that step anew; on several processes, process 0 renames it while the others
  wait.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, restore(step)
    except Exception as e:
      log(
        f"warning: checkpoint at step {step} could not be read ({type(e).__name__}: "
        f"{str(e)[:200]}); trying an older one"
      )
      if set_aside:
        parallel.sync(f"metalearn_unreadable_{step}")
        if parallel.is_primary():
          path = os.path.join(str(manager.directory), str(step))
          os.replace(path, f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        parallel.sync(f"metalearn_set_aside_{step}")
        manager.reload()
  return None


class Checkpoints:
  """The checkpoints of one training run.

  Args:
    workdir: run folder; checkpoints go to `<workdir>/checkpoints`.
    max_to_keep: checkpoints kept (older ones are deleted after a save).
    log: where warnings go (one line each).

  Attributes:
    latest: the step of the newest checkpoint restored or saved by this
      object, None while there is none.
  """

  def __init__(self, workdir: str, *, max_to_keep: int, log: Callable[[str], None]):
    self.directory = checkpoint_dir(workdir)
    self.log = log
    self.latest: int | None = None
    self._manager = _manager(
      workdir,
      max_to_keep=max_to_keep,
      create=True,
      enable_async_checkpointing=False,
      cleanup_tmp_directories=True,
    )

  def restore(self, state: core.MetaTrainState) -> core.MetaTrainState | None:
    """The newest readable checkpoint, shaped and placed as `state`; None if there is none."""
    abstract = state._asdict()
    found = _restore_newest(
      self._manager,
      lambda step: self._manager.restore(step, args=ocp.args.StandardRestore(abstract)),
      self.log,
      set_aside=True,
    )
    if found is None:
      return None
    self.latest = found[0]
    return core.MetaTrainState(**found[1])

  def save(self, step: int, state: core.MetaTrainState) -> None:
    """Saves `state` as the checkpoint of `step` and waits until it is complete.

    Raises:
      CheckpointWriteError: when writing fails (e.g. no space left on the
        device); the partial checkpoint is removed and the older ones are kept.
    """
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state._asdict()), force=True)
      self._manager.wait_until_finished()
    except OSError as e:
      if parallel.is_primary():
        for tmp in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
          shutil.rmtree(tmp, ignore_errors=True)
      kept = (
        f"the checkpoint at step {self.latest} is kept and a re-run resumes from it"
        if self.latest is not None
        else "no earlier checkpoint exists, so a re-run starts from step 0"
      )
      raise CheckpointWriteError(
        e.errno,
        f"could not write the checkpoint at step {step} in {self.directory} "
        f"({e.strerror or e}); {kept}",
      ) from e
    self.latest = step

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self._manager.close()


def latest_theta(workdir: str, theta: PyTree) -> PyTree:
  """Restores only theta from the newest readable checkpoint of a run.

  Nothing else of the train state (optimizer state, step, key) is read or
  needs a template, so no outer optimizer is built: orbax restores the
  `theta` entry alone (`partial_restore`).

  Args:
    workdir: the run's folder (holding `checkpoints/`).
    theta: a template of the meta-parameters: a PyTree of arrays or
      `jax.ShapeDtypeStruct`s with the run's structure, shapes and dtypes
      (e.g. `jax.eval_shape(learner.init, key, example)`).

  Returns:
    theta as `jax.Array`s on the default device.

  Raises:
    FileNotFoundError: when `<workdir>/checkpoints` holds no readable checkpoint.
    ValueError: when the checkpoint's theta is not shaped like the template.
  """
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint found under {directory}")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
  item = {"theta": jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), theta)}
  restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)

  def restore(step: int) -> PyTree:
    args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
    return manager.restore(step, args=args)["theta"]

  try:
    found = _restore_newest(manager, restore, print, set_aside=False)
  finally:
    manager.close()
  if found is None:
    raise FileNotFoundError(f"no readable checkpoint found under {directory}")
  restored = found[1]
  want = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), item["theta"])
  got = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), restored)
  if jax.tree_util.tree_structure(want) != jax.tree_util.tree_structure(got) or want != got:
    raise ValueError(
      f"the checkpoint at step {found[0]} under {directory} holds theta {got}, "
      f"not shaped like the template {want}"
    )
  return jax.tree_util.tree_map(jnp.asarray, restored)


def restore_theta(workdir: str, learner: core.MetaLearner, example: Any, seed: int = 0) -> PyTree:
  """Loads the meta-parameters of the newest checkpoint in `workdir`.

  Args:
    workdir: the run's folder.
    learner: the run's learner (its `init` gives theta's structure; no outer
      optimizer is needed).
    example: one task (no task axis), as `core.init_state` takes it.
    seed: the run's seed (only theta's structure depends on it: none).

  Returns:
    theta as `jax.Array`s.
  """
  init_key, _ = jax.random.split(jax.random.PRNGKey(seed))
  return latest_theta(workdir, jax.eval_shape(learner.init, init_key, example))
