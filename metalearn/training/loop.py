"""The one training loop: meta-train, evaluate periodically, checkpoint, resume.

`meta_train` runs `make_meta_step` under `jax.jit` on batches drawn by a
host-side sampler. Episodes for step s come from `np.random.default_rng([seed,
1, s])` and the step's PRNG key is `fold_in(rng, s)`, so a run restarted from
a checkpoint sees exactly the data and randomness it would have seen had it
not stopped. Checkpoints are orbax checkpoints under `<workdir>/checkpoints`
(written to a temporary folder and renamed when complete); a run started again
in the same workdir resumes from the newest readable one.

Devices: the meta-batch is sharded along the task axis of a device mesh
(`metalearn.parallel`; by default every device of the job) and the state is
replicated, so one, eight or a pod's worth of devices run the same loop. On a
multi-process job (`jax.distributed.initialize()` called by the binary) each
process draws only its own tasks (see `sample_shards`), checkpoints are written
collectively, and only process 0 writes logs, metrics and `eval.json`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from metalearn import core, parallel
from metalearn import episodes as ep

Sampler = Callable[[np.random.Generator, int], ep.Episode]

TRAIN_STREAM, VAL_STREAM, TEST_STREAM = 1, 2, 3


def episode_rng(
  seed: int, stream: int, index: int = 0, piece: int | None = None
) -> np.random.Generator:
  """The numpy generator for episode batch `index` of a stream (train/val/test).

  A batch drawn in several pieces (one per process on a multi-host job) seeds
  piece j with `[seed, stream, index, j]`; a batch drawn whole with `[seed,
  stream, index]`.
  """
  return np.random.default_rng(
    [seed, stream, index] if piece is None else [seed, stream, index, piece]
  )


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
    self.last: dict[str, float] = {}
    if resume_step is not None and os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if _step_of(line) <= resume_step]
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

  def write(self, step: int, metrics: dict[str, float], *, prefix: str = "") -> None:
    """Records `metrics` at `step`; names get `prefix` (e.g. "val/")."""
    row = {"step": int(step), **{prefix + k: float(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(row) + "\n")
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
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def _step_of(line: str) -> float:
  """The step of a metrics.jsonl line; a line cut short by a killed job counts as never."""
  try:
    return json.loads(line)["step"] if line.endswith("\n") else math.inf
  except (ValueError, KeyError, TypeError):
    return math.inf


class _NullWriter:
  """What processes other than 0 write: nothing."""

  last: dict[str, float] = {}  # noqa: RUF012 (never written)

  def write(self, step: int, metrics: dict[str, float], *, prefix: str = "") -> None:
    del step, metrics, prefix

  def log(self, message: str) -> None:
    del message

  def close(self) -> None:
    """Nothing was opened."""


class TrainResult(NamedTuple):
  """What `meta_train` returns: the final state and the final evaluation summary."""

  state: core.MetaTrainState
  eval_summary: dict[str, dict[str, float | int]]


def fixed_batches(sampler: Sampler, seed: int, stream: int, num_tasks: int, batch_size: int):
  """A fixed list of evaluation batches (the same for every call with these arguments).

  `meta_train` draws its validation (`VAL_STREAM`) and test (`TEST_STREAM`)
  episodes this way; `experiments.evaluate` redraws the test ones.
  """
  out, index = [], 0
  while num_tasks > 0:
    size = min(batch_size, num_tasks)
    out.append(sampler(episode_rng(seed, stream, index), size))
    num_tasks -= size
    index += 1
  return out


def _fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  return (
    f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 3600
    else (f"{seconds // 60}m{seconds % 60:02d}s")
  )


def _fmt_rate(steps_per_sec: float) -> str:
  """`1361 steps/s`, or `4.1 s/step` for runs slower than a step a second."""
  if steps_per_sec >= 1 or steps_per_sec <= 0:
    return f"{steps_per_sec:.0f} steps/s"
  return f"{1 / steps_per_sec:.1f} s/step"


def _fmt_summary(summary: dict[str, dict[str, Any]]) -> str:
  return "  ".join(f"{k}={v['mean']:.4g}±{v['ci95']:.2g}" for k, v in sorted(summary.items()))


def _restore_latest(
  manager: ocp.CheckpointManager, abstract: dict, log, *, set_aside: bool = True
) -> dict | None:
  """Restores the newest checkpoint that reads back whole, skipping broken ones.

  A checkpoint that fails to read is renamed `<step>.unreadable` (kept for
  inspection, never loaded again) when `set_aside`, so training can write that
  step anew; on several processes, process 0 renames it while the others wait.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(abstract))
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


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to `path` through a temporary file and a rename."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def meta_train(
  learner: core.MetaLearner,
  sampler: Sampler,
  *,
  optimizer: optax.GradientTransformation,
  num_steps: int,
  meta_batch_size: int,
  workdir: str,
  seed: int = 0,
  eval_sampler: Sampler | None = None,
  val_sampler: Sampler | None = None,
  eval_every: int = 1000,
  checkpoint_every: int = 1000,
  log_every: int = 100,
  num_val_tasks: int = 100,
  num_eval_tasks: int = 1000,
  eval_batch_size: int = 100,
  strategy: str = "auto",
  max_to_keep: int = 3,
  on_nonfinite: str = "raise",
  verbose: bool = True,
  mesh: jax.sharding.Mesh | None = None,
  sample_shards: int | None = None,
  steps_per_call: int = 1,
) -> TrainResult:
  """Meta-trains `learner`, resuming from `<workdir>/checkpoints` when it holds any.

  Args:
    learner: the algorithm.
    sampler: `(rng, num_tasks) -> Episode [T, ...]` (numpy, host side).
    optimizer: outer optimizer.
    num_steps: total meta-steps (a resumed run continues up to this).
    meta_batch_size: tasks per meta-step.
    workdir: where checkpoints, `metrics.jsonl`, TensorBoard events and
      `eval.json` go.
    seed: seeds parameters, episodes and PRNG keys.
    eval_sampler: sampler of held-out episodes for the final evaluation
      (default: `sampler`).
    val_sampler: sampler of the periodic validation episodes (default:
      `eval_sampler`), e.g. a validation split apart from the test split.
    eval_every: steps between validation evaluations (0: only at the end).
    checkpoint_every: steps between checkpoints (0: only at the end).
    log_every: steps between terminal / metrics lines.
    num_val_tasks: held-out tasks in each periodic validation.
    num_eval_tasks: held-out tasks in the final evaluation (`eval.json`).
    eval_batch_size: tasks per evaluation batch.
    strategy: task batching strategy (see `core.batch_over_tasks`).
    max_to_keep: checkpoints kept.
    on_nonfinite: `"raise"`: stop with `FloatingPointError` naming the step at
      the first non-finite meta-loss or gradient (nothing after the last good
      checkpoint is saved); `"skip"`: the update is skipped and counted in the
      `nonfinite_steps` metric.
    verbose: print progress (on process 0 only).
    mesh: the devices to shard the task axis over (`parallel.make_mesh`);
      default: every device of the job. `meta_batch_size` must be a multiple
      of its size (a ValueError says so otherwise); evaluation batches are
      padded to one and the padding dropped.
    sample_shards: the meta-batch of step s is drawn in this many equal
      pieces, piece j from `episode_rng(seed, TRAIN_STREAM, s, j)` (one piece:
      `episode_rng(seed, TRAIN_STREAM, s)`), and each process draws only the
      pieces on its devices. Default: one piece per process. The data depend
      on this number alone, so a one-process run with `sample_shards=P`
      reproduces a run on P processes. Evaluation episodes do not depend on
      it (every process draws the fixed evaluation sets whole).
    steps_per_call: meta-steps per compiled call (`core.repeat_step`): the
      host samples that many batches, the device runs them in one
      `lax.scan`. The steps, their data and their results are those of one
      step per call; what changes is the per-call overhead, which dominates
      steps well under a millisecond (sinusoid on a CPU). Calls never cross a
      log, validation or checkpoint step: where fewer than `steps_per_call`
      steps remain before one, single steps are taken (compiling the
      one-step program too), so make the intervals multiples of it.

  Returns:
    `TrainResult(state, eval_summary)`; `eval_summary` is also written to
    `<workdir>/eval.json` as `{"metrics": {name: {"mean", "ci95", "n",
    "nonfinite"}}, "step", "num_tasks", "method"}`.
  """
  for name, value in [
    ("num_steps", num_steps),
    ("eval_every", eval_every),
    ("checkpoint_every", checkpoint_every),
  ]:
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be an int >= 0, got {value!r}")
  for name, value in [
    ("meta_batch_size", meta_batch_size),
    ("log_every", log_every),
    ("num_eval_tasks", num_eval_tasks),
    ("eval_batch_size", eval_batch_size),
    ("num_val_tasks", num_val_tasks),
    ("max_to_keep", max_to_keep),
    ("steps_per_call", steps_per_call),
  ]:
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name} must be an int > 0, got {value!r}")
  if on_nonfinite not in ("raise", "skip"):
    raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
  if sample_shards is not None and (not isinstance(sample_shards, int) or sample_shards <= 0):
    raise ValueError(f"sample_shards must be an int > 0 or None, got {sample_shards!r}")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir!r} exists and is not a directory")
  mesh = mesh if mesh is not None else parallel.make_mesh()
  parallel.check_divisible(meta_batch_size, mesh, "meta_batch_size")
  num_pieces = sample_shards or jax.process_count()
  if num_pieces % jax.process_count() or meta_batch_size % num_pieces:
    raise ValueError(
      f"sample_shards={num_pieces} must be a multiple of the {jax.process_count()} processes "
      f"and divide meta_batch_size={meta_batch_size}"
    )
  os.makedirs(workdir, exist_ok=True)
  parallel.check_shared_directory(workdir)
  eval_sampler = eval_sampler or sampler
  val_sampler = val_sampler or eval_sampler
  primary = parallel.is_primary()
  verbose = verbose and primary

  example = ep.task(sampler(episode_rng(seed, TRAIN_STREAM, 0), 1), 0)
  state = core.init_state(learner, optimizer, jax.random.PRNGKey(seed), example)
  state = parallel.replicate(state, mesh)
  manager = ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=True,
      enable_async_checkpointing=False,
      cleanup_tmp_directories=True,
    ),
  )
  log = (lambda m: print(m, flush=True)) if verbose else (lambda m: None)
  restored = _restore_latest(manager, state._asdict(), log)
  start = 0
  if restored is not None:
    state = core.MetaTrainState(**restored)
    start = int(parallel.fetch(state.step))
    log(f"[{learner.name}] resuming from the checkpoint at step {start}")
  writer = (
    MetricWriter(workdir, resume_step=start if restored is not None else None, verbose=verbose)
    if primary
    else _NullWriter()
  )

  donate = (0,) if jax.default_backend() != "cpu" else ()
  replicated, sharded = parallel.replicated(mesh), parallel.task_sharded(mesh)
  meta_step = core.make_meta_step(learner, optimizer, strategy=strategy)
  step_fn, steps_fn = (
    jax.jit(
      fn,
      in_shardings=(replicated, sharded),
      out_shardings=(replicated, replicated),
      donate_argnums=donate,
    )
    for fn in (meta_step, core.repeat_step(meta_step))
  )
  intervals = [n for n in (log_every, eval_every, checkpoint_every) if n]

  def call_size(step: int) -> int:
    """Steps the call at `step` takes: `steps_per_call`, unless an event comes first."""
    event = min([num_steps] + [(step // n + 1) * n for n in intervals])
    return steps_per_call if event - step >= steps_per_call else 1

  eval_jit = jax.jit(
    core.make_eval_step(learner, strategy=strategy),
    in_shardings=(replicated, sharded, replicated),
    out_shardings=replicated,
  )

  def eval_step(theta, batch, key):
    """Per-task metrics `[T]` (numpy) of a host batch, padded to the mesh and sharded."""
    n = ep.num_tasks(batch)
    padded = parallel.put_global_batch(parallel.pad_tasks(batch, mesh.size), mesh)
    metrics = parallel.fetch(eval_jit(theta, padded, parallel.replicate(key, mesh)))
    return {k: v[:n] for k, v in metrics.items()}

  def train_batch(step: int) -> ep.Episode:
    def piece(j: int, n: int) -> ep.Episode:
      return sampler(episode_rng(seed, TRAIN_STREAM, step, None if num_pieces == 1 else j), n)

    return parallel.sample_global_batch(piece, meta_batch_size, mesh, num_pieces)

  val_batches = fixed_batches(val_sampler, seed, VAL_STREAM, num_val_tasks, eval_batch_size)
  eval_key = jax.random.PRNGKey(seed + 1)

  def validate(step: int) -> None:
    summary = core.evaluate(eval_step, state.theta, val_batches, eval_key)
    writer.write(step, {k: v["mean"] for k, v in summary.items()}, prefix="val/")
    writer.log(
      f"[{learner.name}] step {step} validation ({num_val_tasks} tasks): {_fmt_summary(summary)}"
    )

  pending: list[tuple[int, dict]] = []  # (first step, metrics [] or [k] of the call)
  # Skipped steps so far: a resumed run reads the count logged at its checkpoint.
  skipped = int(writer.last.get("nonfinite_steps", 0))
  t0, timed_from = time.time(), start

  def flush(step: int) -> None:
    """Fetches the metrics of the steps since the last flush, checks them, logs them."""
    nonlocal skipped, pending
    if not pending:
      return
    fetched = []
    for (first, _), m in zip(pending, parallel.fetch([m for _, m in pending]), strict=True):
      m = {k: np.reshape(v, -1) for k, v in m.items()}  # one entry per step of the call
      fetched += [(first + i, {k: v[i] for k, v in m.items()}) for i in range(len(m["loss"]))]
    for s, m in fetched:
      if m["nonfinite"] > 0:
        if on_nonfinite == "raise":
          writer.close()
          raise FloatingPointError(
            f"non-finite meta-loss or meta-gradient at step {s} (loss={m['loss']}); theta was "
            f"not updated and the last good checkpoint in {workdir} is kept. Lower the "
            "learning rates, or set on_nonfinite='skip' to skip such steps."
          )
        skipped += 1
    mean = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
    mean.pop("nonfinite")
    mean["nonfinite_steps"] = skipped
    rate = (step - timed_from) / max(time.time() - t0, 1e-9)
    mean["steps_per_sec"] = rate
    writer.write(step, mean)
    eta = (num_steps - step) / rate if rate > 0 else math.inf
    writer.log(
      f"[{learner.name}] step {step}/{num_steps} ({100 * step / max(num_steps, 1):.0f}%) "
      f"loss={mean['loss']:.4g} grad_norm={mean['grad_norm']:.3g} "
      f"{_fmt_rate(rate)} ETA {_fmt_time(eta) if math.isfinite(eta) else '?'}"
    )
    pending = []

  if start == 0 and num_steps > 0:
    devices = f"{mesh.size} {mesh.devices.flat[0].platform} device(s)"
    if jax.process_count() > 1:
      devices += f" of {jax.process_count()} processes"
    log(
      f"[{learner.name}] training {num_steps} meta-steps of {meta_batch_size} tasks "
      f"(strategy={strategy}, {devices}); compiling..."
    )
  step = start
  while step < num_steps:
    size = call_size(step)
    if size == 1:
      state, metrics = step_fn(state, train_batch(step))
    else:
      state, metrics = steps_fn(state, tuple(train_batch(s) for s in range(step, step + size)))
    pending.append((step, metrics))
    done = step + size
    if step == start:
      jax.block_until_ready(metrics)
      what = "step" if size == 1 else f"call of {size} steps"
      log(f"[{learner.name}] first {what} (compile included) took {time.time() - t0:.1f}s")
      t0, timed_from = time.time(), done
    if done % log_every == 0 or done == num_steps:
      flush(done)
    paused = time.time()
    if eval_every and done % eval_every == 0 and done != num_steps:
      validate(done)
    if (checkpoint_every and done % checkpoint_every == 0) or done == num_steps:
      flush(done)
      manager.save(done, args=ocp.args.StandardSave(state._asdict()), force=True)
    t0 += time.time() - paused  # the step rate counts training only
    step = done
  manager.wait_until_finished()

  test_batches = fixed_batches(eval_sampler, seed, TEST_STREAM, num_eval_tasks, eval_batch_size)
  t_eval = time.time()
  summary = core.evaluate(eval_step, state.theta, test_batches, eval_key)
  writer.log(
    f"[{learner.name}] final evaluation on {num_eval_tasks} held-out tasks "
    f"({time.time() - t_eval:.1f}s): {_fmt_summary(summary)}"
  )
  final_step = int(parallel.fetch(state.step))
  writer.write(final_step, {k: v["mean"] for k, v in summary.items()}, prefix="eval/")
  writer.close()
  if primary:
    write_json_atomic(
      os.path.join(workdir, "eval.json"),
      {
        "metrics": summary,
        "step": final_step,
        "num_tasks": num_eval_tasks,
        "method": learner.name,
        "nonfinite_steps": skipped,
      },
    )
  parallel.sync("metalearn_meta_train_done")
  return TrainResult(state, summary)


def restore_theta(
  workdir: str, learner: core.MetaLearner, optimizer, example: ep.Episode, seed: int = 0
):
  """Loads the meta-parameters of the newest checkpoint in `workdir`."""
  state = core.init_state(learner, optimizer, jax.random.PRNGKey(seed), example)
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  restored = _restore_latest(manager, state._asdict(), print, set_aside=False)
  if restored is None:
    raise FileNotFoundError(f"no checkpoint found under {workdir}/checkpoints")
  return jax.tree_util.tree_map(jnp.asarray, restored["theta"])
