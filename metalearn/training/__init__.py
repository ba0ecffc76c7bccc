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

The parts, each on one screen:

- `loop`: `meta_train`, the loop and what it does between calls.
- `writer`: `MetricWriter` (terminal, `metrics.jsonl`, TensorBoard), strict JSON.
- `checkpoints`: orbax save/restore; `latest_theta` restores theta alone.
- `held_out`: periodic validation and the final evaluation.
- `progress`: the progress line and its timing.
- `faults`: non-finite steps, SIGTERM, the workdir lock.
- `sampling`: the seeded episode streams.
"""

from metalearn.training.checkpoints import (
  CheckpointWriteError,
  checkpoint_dir,
  latest_theta,
  restore_theta,
)
from metalearn.training.faults import (
  Preempted,
  SkippedStepsError,
  WorkdirLock,
  WorkdirLockedError,
)
from metalearn.training.loop import TrainResult, meta_train
from metalearn.training.sampling import (
  TEST_STREAM,
  TRAIN_STREAM,
  VAL_STREAM,
  DeviceSampler,
  Sampler,
  episode_key,
  episode_rng,
  fixed_batches,
  on_device,
)
from metalearn.training.writer import MetricWriter, write_json_atomic

__all__ = [
  "TEST_STREAM",
  "TRAIN_STREAM",
  "VAL_STREAM",
  "CheckpointWriteError",
  "DeviceSampler",
  "MetricWriter",
  "Preempted",
  "Sampler",
  "SkippedStepsError",
  "TrainResult",
  "WorkdirLock",
  "WorkdirLockedError",
  "checkpoint_dir",
  "episode_key",
  "episode_rng",
  "fixed_batches",
  "latest_theta",
  "meta_train",
  "on_device",
  "restore_theta",
  "write_json_atomic",
]
