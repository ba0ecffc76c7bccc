"""`meta_train`: the loop that takes meta-steps and, between them, logs, validates, saves."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from metalearn import core, parallel
from metalearn.training import checkpoints as ckpt
from metalearn.training import faults, held_out, sampling
from metalearn.training import writer as writing
from metalearn.training.progress import Progress, fmt_summary

Metrics = dict[str, Any]


class TrainResult(NamedTuple):
  """What `meta_train` returns: the final state and the final evaluation summary."""

  state: core.MetaTrainState
  eval_summary: dict[str, dict[str, float | int]]


class Schedule(NamedTuple):
  """When the loop logs, validates and saves, and how many steps each call takes."""

  num_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  steps_per_call: int

  def call_size(self, step: int) -> int:
    """Steps the call at `step` takes: `steps_per_call`, unless an event comes first."""
    intervals = [n for n in (self.log_every, self.eval_every, self.checkpoint_every) if n]
    event = min([self.num_steps] + [(step // n + 1) * n for n in intervals])
    return self.steps_per_call if event - step >= self.steps_per_call else 1

  def logs(self, done: int) -> bool:
    return done % self.log_every == 0 or done == self.num_steps

  def validates(self, done: int) -> bool:
    return bool(self.eval_every) and done % self.eval_every == 0 and done != self.num_steps

  def saves(self, done: int) -> bool:
    return (bool(self.checkpoint_every) and done % self.checkpoint_every == 0) or (
      done == self.num_steps
    )


class StepMetrics:
  """The metrics of the steps since the last metrics line: fetched, checked, averaged.

  Device metrics are fetched only when a line is due (`collect`), so the host
  does not wait for the device after every call. Each step is checked by
  `NonfiniteSteps` as it is fetched.

  Args:
    writer: the run's metric writer.
    progress: the run's timing.
    nonfinite: the run's non-finite step check.
    unlogged: steps fetched before (a run resumed between two lines).
  """

  def __init__(self, writer, progress: Progress, nonfinite: faults.NonfiniteSteps, unlogged=()):
    self.writer, self.progress, self.nonfinite = writer, progress, nonfinite
    self.pending: list[tuple[int, Metrics]] = []  # (first step index, metrics [] or [k])
    self.unlogged: list[tuple[int, Metrics]] = list(unlogged)  # (step index, host scalars)

  def add(self, first: int, metrics: Metrics) -> None:
    self.pending.append((first, metrics))

  def collect(self, checkpoint: int | None) -> None:
    """Fetches the pending metrics and checks each step (may raise, see `NonfiniteSteps`)."""
    fetched = parallel.fetch([m for _, m in self.pending])
    for (first, _), m in zip(self.pending, fetched, strict=True):
      m = {k: np.reshape(v, -1) for k, v in m.items()}  # one entry per step of the call
      for i in range(len(m["loss"])):
        step_metrics = {k: v[i] for k, v in m.items()}
        self.nonfinite.check(first + i, step_metrics, checkpoint)
        self.unlogged.append((first + i, step_metrics))
    self.pending = []

  def flush(self, step: int, checkpoint: int | None) -> None:
    """Writes the metrics line of `step` (means since the last line) and the progress line."""
    self.collect(checkpoint)
    if not self.unlogged:
      return
    row = mean_row([m for _, m in self.unlogged])
    row["nonfinite_steps"] = self.nonfinite.skipped
    rate = self.progress.rate(step)
    row["steps_per_sec"] = rate
    self.writer.write(step, row)
    self.writer.log(self.progress.line(step, row, rate))
    self.unlogged = []


def mean_row(steps: list[Metrics]) -> dict[str, float]:
  """Each metric's mean over the finite values of `steps`; `<name>/nonfinite` counts the others."""
  row, counts = {}, {}
  for k in steps[-1]:
    if k == "nonfinite":
      continue
    values = [m[k] for m in steps]
    finite = [v for v in values if np.isfinite(v)]
    row[k] = float(np.mean(finite)) if finite else math.nan
    if len(finite) < len(values):
      counts[f"{k}/nonfinite"] = len(values) - len(finite)
  return {**row, **counts}


def compiled_steps(
  learner: core.MetaLearner, optimizer: optax.GradientTransformation, strategy: str, mesh
) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """`(one step, steps_per_call steps)`, jitted with the state replicated and tasks sharded."""
  donate = (0,) if jax.default_backend() != "cpu" else ()
  replicated, sharded = parallel.replicated(mesh), parallel.task_sharded(mesh)
  meta_step = core.make_meta_step(learner, optimizer, strategy=strategy)
  one, many = (
    jax.jit(
      fn,
      in_shardings=(replicated, sharded),
      out_shardings=(replicated, replicated),
      donate_argnums=donate,
    )
    for fn in (meta_step, core.repeat_step(meta_step))
  )
  return one, many


def train_batches(
  sampler: sampling.Sampler, seed: int, meta_batch_size: int, mesh, num_pieces: int
) -> Callable[[int], Any]:
  """`step -> global batch`: step s's tasks, each process drawing its own pieces.

  A device sampler makes the whole batch in one jitted program whose output
  is sharded over the task axis (on several processes, each computes its own
  devices' rows); its batches do not depend on `num_pieces`.
  """
  if isinstance(sampler, sampling.DeviceSampler):
    sharded = parallel.task_sharded(mesh)
    return lambda step: sampling.device_batch(
      sampler, sampling.episode_key(seed, sampling.TRAIN_STREAM, step), meta_batch_size, sharded
    )

  def batch(step: int) -> Any:
    def piece(j: int, n: int) -> Any:
      rng = sampling.episode_rng(seed, sampling.TRAIN_STREAM, step, None if num_pieces == 1 else j)
      return sampler(rng, n)

    return parallel.sample_global_batch(piece, meta_batch_size, mesh, num_pieces)

  return batch


@contextlib.contextmanager
def workdir_lock(workdir: str, log: Callable[[str], None]) -> Iterator[None]:
  """Holds `<workdir>/lock` (process 0 takes it; on several processes all fail together)."""
  lock = faults.WorkdirLock(workdir, log)
  error = None
  if parallel.is_primary():
    try:
      lock.__enter__()
    except faults.WorkdirLockedError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if int(failed) and error is None:
      error = faults.WorkdirLockedError(f"process 0 could not take the lock of workdir {workdir}")
  if error is not None:
    raise error
  try:
    yield
  finally:
    lock.__exit__(None, None, None)


def check_arguments(**kwargs: Any) -> None:
  """Raises ValueError naming the first of `meta_train`'s arguments that is out of range."""
  for name in ("num_steps", "eval_every", "checkpoint_every"):
    value = kwargs[name]
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be an int >= 0, got {value!r}")
  for name in (
    "meta_batch_size",
    "log_every",
    "num_eval_tasks",
    "eval_batch_size",
    "num_val_tasks",
    "max_to_keep",
    "steps_per_call",
  ):
    value = kwargs[name]
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name} must be an int > 0, got {value!r}")
  if kwargs["on_nonfinite"] not in ("raise", "skip"):
    raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {kwargs['on_nonfinite']!r}")
  fraction = kwargs["max_skipped_fraction"]
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
    raise ValueError(f"max_skipped_fraction must be a number in [0, 1], got {fraction!r}")
  shards = kwargs["sample_shards"]
  if shards is not None and (not isinstance(shards, int) or shards <= 0):
    raise ValueError(f"sample_shards must be an int > 0 or None, got {shards!r}")
  workdir = kwargs["workdir"]
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir!r} exists and is not a directory")


def meta_train(
  learner: core.MetaLearner,
  sampler: sampling.Sampler,
  *,
  evaluate: core.EvaluateFn,
  optimizer: optax.GradientTransformation,
  num_steps: int,
  meta_batch_size: int,
  workdir: str,
  seed: int = 0,
  eval_sampler: sampling.Sampler | None = None,
  val_sampler: sampling.Sampler | None = None,
  eval_every: int = 1000,
  checkpoint_every: int = 1000,
  log_every: int = 100,
  num_val_tasks: int = 100,
  num_eval_tasks: int = 1000,
  eval_batch_size: int = 100,
  strategy: str = "auto",
  max_to_keep: int = 3,
  on_nonfinite: str = "raise",
  max_skipped_fraction: float = 0.1,
  verbose: bool = True,
  mesh: jax.sharding.Mesh | None = None,
  sample_shards: int | None = None,
  steps_per_call: int = 1,
) -> TrainResult:
  """Meta-trains `learner`, resuming from `<workdir>/checkpoints` when it holds any.

  Args:
    learner: the algorithm.
    sampler: `(rng, num_tasks) -> tasks [T, ...]` (numpy, host side), any
      PyTree with a leading task axis; or `training.on_device((key,
      num_tasks) -> tasks)` for a family that samples in JAX, whose batches
      are made on the devices (step s's from `episode_key(seed, TRAIN_STREAM,
      s)`, sharded over the task axis) and never pass through the host.
    evaluate: the task family's one-task evaluator, `(theta, task, key) ->
      {name: scalar}` (`metalearn.evaluation`), for validation and the final
      evaluation.
    optimizer: outer optimizer.
    num_steps: total meta-steps (a resumed run continues up to this).
    meta_batch_size: tasks per meta-step.
    workdir: where checkpoints, `metrics.jsonl`, TensorBoard events and
      `eval.json` go. While the run lasts, `<workdir>/lock` names its process;
      a second run on the same workdir raises `WorkdirLockedError`.
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
    on_nonfinite: `"raise"`: stop with `FloatingPointError` at the first
      non-finite meta-loss or gradient, naming the step (counted as completed
      steps are, from 1) and the last good checkpoint, which is kept (nothing
      after it is saved); `"skip"`: the update is skipped, a line names the
      step, and `nonfinite_steps` (metrics lines, `eval.json`) counts them.
    max_skipped_fraction: with `on_nonfinite="skip"`, the run stops with
      `SkippedStepsError` (a `FloatingPointError`) as soon as more than this
      fraction of its `num_steps` steps were skipped (1.0: never).
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
    "nonfinite"}}, "step", "num_tasks", "method", "nonfinite_steps"}` (strict
    JSON: a mean or interval with no finite value is `null`).

  Raises:
    FloatingPointError: a non-finite step with `on_nonfinite="raise"`.
    SkippedStepsError: too many skipped steps with `on_nonfinite="skip"`.
    Preempted: the process received SIGTERM; a checkpoint was saved at the
      last completed step and running again resumes from it, ending as a run
      never stopped would.
    WorkdirLockedError: another process is training in `workdir`.
    CheckpointWriteError: a checkpoint could not be written (e.g. the disk is
      full); the previous checkpoint is kept and a re-run resumes from it.
  """
  check_arguments(**locals())
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
  verbose = verbose and parallel.is_primary()
  log = (lambda m: print(m, flush=True)) if verbose else (lambda m: None)
  eval_sampler = eval_sampler or sampler
  run = Run(
    learner=learner,
    sampler=sampler,
    optimizer=optimizer,
    meta_batch_size=meta_batch_size,
    workdir=workdir,
    seed=seed,
    schedule=Schedule(num_steps, log_every, eval_every, checkpoint_every, steps_per_call),
    eval_step=core.make_eval_step(evaluate, strategy=strategy),
    val_batches=lambda: sampling.fixed_batches(
      val_sampler or eval_sampler, seed, sampling.VAL_STREAM, num_val_tasks, eval_batch_size
    ),
    test_batches=lambda: sampling.fixed_batches(
      eval_sampler, seed, sampling.TEST_STREAM, num_eval_tasks, eval_batch_size
    ),
    num_val_tasks=num_val_tasks,
    num_eval_tasks=num_eval_tasks,
    strategy=strategy,
    max_to_keep=max_to_keep,
    on_nonfinite=on_nonfinite,
    max_skipped_fraction=max_skipped_fraction,
    verbose=verbose,
    log=log,
    mesh=mesh,
    num_pieces=num_pieces,
  )
  with workdir_lock(workdir, log), faults.StopOnSigterm() as sigterm:
    return train(run, sigterm)


class Run(NamedTuple):
  """What `meta_train` was asked to do, checked; the parts below read it."""

  learner: core.MetaLearner
  sampler: sampling.Sampler
  optimizer: optax.GradientTransformation
  meta_batch_size: int
  workdir: str
  seed: int
  schedule: Schedule
  eval_step: Callable[..., Any]
  val_batches: Callable[[], list[Any]]
  test_batches: Callable[[], list[Any]]
  num_val_tasks: int
  num_eval_tasks: int
  strategy: str
  max_to_keep: int
  on_nonfinite: str
  max_skipped_fraction: float
  verbose: bool
  log: Callable[[str], None]
  mesh: jax.sharding.Mesh
  num_pieces: int


def restore_or_init(
  run: Run, checkpoints: ckpt.Checkpoints
) -> tuple[core.MetaTrainState, int | None]:
  """`(state, step)` of the newest readable checkpoint, else `(initial state, None)`."""
  example = core.task(sampling.draw(run.sampler, run.seed, sampling.TRAIN_STREAM, 0, 1), 0)
  state = core.init_state(run.learner, run.optimizer, jax.random.PRNGKey(run.seed), example)
  state = parallel.replicate(state, run.mesh)
  restored = checkpoints.restore(state)
  if restored is None:
    return state, None
  step = int(parallel.fetch(restored.step))
  run.log(f"[{run.learner.name}] resuming from the checkpoint at step {step}")
  return restored, step


def resumed_metrics(workdir: str, step: int | None) -> tuple[int, list[tuple[int, Metrics]]]:
  """`(skipped steps, unlogged steps)` at the checkpoint of `step` (None: a fresh run)."""
  if step is None:
    if parallel.is_primary():
      writing.remove_unlogged(workdir)
    return 0, []
  saved = writing.load_unlogged(workdir, step)
  if saved is not None:
    return saved
  last = writing.last_values(os.path.join(workdir, "metrics.jsonl"), step)
  return int(last.get("nonfinite_steps", 0)), []


class Stopper:
  """Stops the run at a completed step on SIGTERM: checkpoint there, then `Preempted`.

  On several processes the request is agreed on at metrics-line steps (every
  process stops at the same step, as checkpoints are written collectively).
  """

  def __init__(self, run: Run, sigterm: faults.StopOnSigterm, checkpoints, metrics):
    self.run, self.sigterm, self.checkpoints, self.metrics = run, sigterm, checkpoints, metrics

  def due(self, done: int) -> bool:
    if jax.process_count() == 1:
      return self.sigterm.requested
    if not self.run.schedule.logs(done):
      return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(self.sigterm.requested))
    return bool(np.any(flags))

  def stop(self, done: int, state: core.MetaTrainState) -> None:
    """Saves `state` as step `done` (unless saved already) and raises `Preempted`."""
    self.metrics.collect(self.checkpoints.latest)
    if self.checkpoints.latest != done:
      if parallel.is_primary():
        writing.save_unlogged(
          self.run.workdir, done, self.metrics.nonfinite.skipped, self.metrics.unlogged
        )
      self.checkpoints.save(done, state)
    raise faults.Preempted(done, self.run.workdir)


def train(run: Run, sigterm: faults.StopOnSigterm) -> TrainResult:
  """Sets the run up (state, checkpoints, writer), runs the loop, evaluates, writes eval.json."""
  name, primary = run.learner.name, parallel.is_primary()
  checkpoints = ckpt.Checkpoints(run.workdir, max_to_keep=run.max_to_keep, log=run.log)
  writer: Any = writing.NullWriter()
  try:
    state, resumed = restore_or_init(run, checkpoints)
    skipped, unlogged = resumed_metrics(run.workdir, resumed)
    if primary:
      writer = writing.MetricWriter(run.workdir, resume_step=resumed, verbose=run.verbose)
    start = resumed or 0
    progress = Progress(name, run.schedule.num_steps, start)
    nonfinite = faults.NonfiniteSteps(
      run.on_nonfinite,
      max_skipped_fraction=run.max_skipped_fraction,
      num_steps=run.schedule.num_steps,
      skipped=skipped,
      name=name,
      workdir=run.workdir,
      log=writer.log,
    )
    metrics = StepMetrics(writer, progress, nonfinite, unlogged)
    stopper = Stopper(run, sigterm, checkpoints, metrics)
    evaluation = held_out.HeldOut(
      held_out.sharded(run.eval_step, run.mesh),
      key=jax.random.PRNGKey(run.seed + 1),
      writer=writer,
      name=name,
      stop_requested=lambda: sigterm.requested,
      on_stop=lambda: stopper.stop(int(parallel.fetch(state.step)), state),
    )
    state = loop(run, state, start, metrics, progress, evaluation, checkpoints, stopper)
    return finish(run, state, evaluation, writer, nonfinite)
  finally:
    writer.close()
    checkpoints.close()


def loop(run, state, start, metrics, progress, evaluation, checkpoints, stopper):
  """Meta-steps from `start` to `num_steps`; between calls: lines, validation, checkpoints."""
  schedule = run.schedule
  one, many = compiled_steps(run.learner, run.optimizer, run.strategy, run.mesh)
  batch = train_batches(run.sampler, run.seed, run.meta_batch_size, run.mesh, run.num_pieces)
  val_batches = run.val_batches()
  if start == 0 and schedule.num_steps > 0:
    devices = f"{run.mesh.size} {run.mesh.devices.flat[0].platform} device(s)"
    if jax.process_count() > 1:
      devices += f" of {jax.process_count()} processes"
    run.log(
      f"[{run.learner.name}] training {schedule.num_steps} meta-steps of {run.meta_batch_size} "
      f"tasks (strategy={run.strategy}, {devices}); compiling..."
    )
  step = start
  while step < schedule.num_steps:
    size = schedule.call_size(step)
    if size == 1:
      state, step_metrics = one(state, batch(step))
    else:
      state, step_metrics = many(state, tuple(batch(s) for s in range(step, step + size)))
    metrics.add(step, step_metrics)
    done = step + size
    if step == start:
      jax.block_until_ready(step_metrics)
      run.log(progress.first_call_done(done, size))
    if schedule.logs(done):
      metrics.flush(done, checkpoints.latest)
    with progress.paused():
      if schedule.validates(done):
        evaluation.validate(done, state.theta, val_batches, run.num_val_tasks)
      if schedule.saves(done):
        metrics.flush(done, checkpoints.latest)
        checkpoints.save(done, state)
      if stopper.due(done):
        stopper.stop(done, state)
    step = done
  return state


def finish(run, state, evaluation, writer, nonfinite) -> TrainResult:
  """The final evaluation: its lines, `eval.json` (process 0), and the result."""
  test_batches = run.test_batches()
  t_eval = time.time()
  final_step = int(parallel.fetch(state.step))
  summary = evaluation.final(final_step, state.theta, test_batches)
  skipped = (
    f"; {nonfinite.skipped} of {final_step} steps skipped (non-finite)"
    if run.on_nonfinite == "skip"
    else ""
  )
  writer.log(
    f"[{run.learner.name}] final evaluation on {run.num_eval_tasks} held-out tasks "
    f"({time.time() - t_eval:.1f}s): {fmt_summary(summary)}{skipped}"
  )
  writer.close()
  if parallel.is_primary():
    writing.write_json_atomic(
      os.path.join(run.workdir, "eval.json"),
      {
        "metrics": summary,
        "step": final_step,
        "num_tasks": run.num_eval_tasks,
        "method": run.learner.name,
        "nonfinite_steps": nonfinite.skipped,
      },
    )
    writing.remove_unlogged(run.workdir)
  parallel.sync("metalearn_meta_train_done")
  return TrainResult(state, summary)
