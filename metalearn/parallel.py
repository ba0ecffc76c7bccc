"""Task-axis parallelism: a device mesh, sharded episode batches, multi-host helpers.

Data parallelism over tasks is the one kind of parallelism a meta-batch needs:
tasks are independent until their meta-gradients are averaged. The meta-batch
`[T, ...]` is sharded along the mesh axis `"tasks"` (`T / D` tasks per device),
and theta and the optimizer state are replicated. The meta-step itself is the
unchanged `core.make_meta_step` under `jax.jit` with these shardings: XLA
partitions the per-task work and inserts the all-reduce of the task-mean
meta-gradient. Nothing in the learners or in `core` knows about devices.

The same code runs on one CPU, on simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), on one or several GPUs,
on a TPU and across the hosts of a TPU pod or a GPU cluster. Across hosts JAX's
multi-controller runtime is used: the binary calls `jax.distributed.initialize()`
before anything else (the library never does), every process runs the same
program, and `jax.devices()` lists the devices of all processes. Each process
then supplies only the rows of a global batch that live on its own devices
(`sample_global_batch`), and fetches only replicated results (`fetch`).

Divisibility: a training meta-batch must divide evenly over the mesh; a batch
that does not is refused with an error naming the sizes (`check_divisible`),
never silently padded, since padded tasks would change the meta-gradient.
Evaluation batches are padded instead (`pad_tasks`): their per-task metrics are
independent, and the padded rows are dropped after the step.

On a CPU backend, `reserve_host_cores` splits the cores between XLA's thread
pool and the Python thread that samples tasks (small models on few cores).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from metalearn import core
from metalearn.types import PyTree

TASK_AXIS = "tasks"


def make_mesh(num_devices: int | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh (`"tasks"`) over the job's devices, ordered by process.

  Args:
    num_devices: how many devices to use; None (or 0) takes every device of
      the job, `jax.devices()`, which spans all processes on a multi-host job.
      A smaller number takes the first ones and is allowed on one process only.
    devices: the devices to use instead (overrides `num_devices`).

  Returns:
    A `Mesh` of shape `{"tasks": D}`. Devices are sorted by (process, id), so
    the rows of a task-sharded batch held by one process are contiguous.

  Raises:
    ValueError: when `num_devices` is out of range, or is a subset of the
      devices of a multi-process job.
  """
  if devices is None:
    available = jax.devices()
    if num_devices is None or num_devices == 0:
      num_devices = len(available)
    if not isinstance(num_devices, int) or not 0 < num_devices <= len(available):
      raise ValueError(
        f"num_devices={num_devices!r}: this job has {len(available)} device(s) "
        f"({available[0].platform}); choose 1..{len(available)}, or 0 for all of them"
      )
    if jax.process_count() > 1 and num_devices != len(available):
      raise ValueError(
        f"num_devices={num_devices}: a job of {jax.process_count()} processes must use all "
        f"{len(available)} devices (0)"
      )
    devices = available[:num_devices]
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.array(devices), (TASK_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of values held whole on every device (theta, optimizer state)."""
  return NamedSharding(mesh, PartitionSpec())


def task_sharded(mesh: Mesh) -> NamedSharding:
  """The sharding of batches `[T, ...]` split along their leading task axis."""
  return NamedSharding(mesh, PartitionSpec(TASK_AXIS))


def check_divisible(num_tasks: int, mesh: Mesh, name: str = "meta_batch_size") -> None:
  """Raises ValueError unless `num_tasks` splits evenly over the mesh's devices."""
  d = mesh.size
  if num_tasks % d:
    lower, upper = (num_tasks // d) * d, -(-num_tasks // d) * d
    suggestions = " or ".join(str(s) for s in (lower, upper) if s > 0)
    raise ValueError(
      f"{name}={num_tasks} does not divide over the {d} devices the task axis is sharded "
      f"over ({mesh.devices.flat[0].platform}): use a multiple of {d} (e.g. {suggestions}), "
      "or fewer devices"
    )


def _put(tree: PyTree, sharding: NamedSharding) -> PyTree:
  """Places host values that are identical on every process under `sharding`."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree_util.tree_map(put, tree)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Puts a PyTree (e.g. the `MetaTrainState`) whole on every device of the mesh.

  On several processes every process must pass the same values (initialising
  from the same seed does that).
  """
  return _put(jax.device_get(tree), replicated(mesh))


def put_global_batch(batch: PyTree, mesh: Mesh) -> PyTree:
  """Shards a whole batch `[T, ...]`, which every process holds, over the task axis.

  Used for evaluation episodes, which every process draws whole (they are a
  small fixed set), so that evaluation is the same on every topology.
  """
  check_divisible(core.num_tasks(batch), mesh, "the number of evaluation tasks")
  return _put(batch, task_sharded(mesh))


def process_rows(num_tasks: int, mesh: Mesh) -> tuple[int, int]:
  """The rows `[start, stop)` of a task-sharded batch of `num_tasks` on this process's devices.

  Raises:
    ValueError: when the batch does not divide over the mesh, or this
      process's rows are not contiguous (a mesh not built by `make_mesh`).
  """
  check_divisible(num_tasks, mesh)
  index_map = task_sharded(mesh).addressable_devices_indices_map((num_tasks,))
  spans = sorted(
    {(s[0].start or 0, num_tasks if s[0].stop is None else s[0].stop) for s in index_map.values()}
  )
  for (_, stop), (start, _) in itertools.pairwise(spans):
    if stop != start:
      raise ValueError(f"this process's rows of the task axis are not contiguous: {spans}")
  return spans[0][0], spans[-1][1]


def sample_global_batch(
  sample_piece: Callable[[int, int], PyTree],
  num_tasks: int,
  mesh: Mesh,
  num_pieces: int | None = None,
) -> PyTree:
  """Draws a task-sharded global batch, each process drawing only its own rows.

  The global batch `[T, ...]` is the concatenation of `num_pieces` pieces of
  `T / num_pieces` tasks; piece j is `sample_piece(j, T / num_pieces)` (give
  each piece its own seed, e.g. `[seed, stream, step, j]`). A process draws
  the pieces that fall on its devices and nothing else, so a multi-host job
  samples each task exactly once. The batch depends on `num_pieces`, not on
  the number of processes or devices: one process with `num_pieces=2` draws
  the same batch as two processes with one piece each.

  Args:
    sample_piece: `(piece_index, num_tasks_in_piece) -> Episode [n, ...]` (numpy).
    num_tasks: T, the global meta-batch size.
    mesh: from `make_mesh`.
    num_pieces: pieces per batch; None: one per process. Must be a multiple of
      the process count and divide T.

  Returns:
    The `Episode [T, ...]` for a step jitted with `in_shardings=task_sharded(mesh)`:
    on several processes, global `jax.Array`s sharded along `"tasks"`; on one
    process, the host (numpy) batch, which that `jax.jit` shards itself.
  """
  processes = jax.process_count()
  num_pieces = num_pieces or processes
  check_divisible(num_tasks, mesh)
  if num_pieces % processes or num_tasks % num_pieces:
    raise ValueError(
      f"the batch of {num_tasks} tasks is drawn in {num_pieces} pieces, which must be a "
      f"multiple of the {processes} processes and divide {num_tasks}"
    )
  size = num_tasks // num_pieces
  start, stop = process_rows(num_tasks, mesh)
  pieces = [sample_piece(j, size) for j in range(start // size, stop // size)]
  local = pieces[0] if len(pieces) == 1 else _concat(pieces)
  sharding = task_sharded(mesh)
  if processes == 1:
    # The host batch as is: a `jax.jit` whose `in_shardings` name `task_sharded(mesh)`
    # places it, at a fraction of the cost of a `jax.device_put` per step.
    return local
  return jax.tree_util.tree_map(
    lambda x: jax.make_array_from_process_local_data(sharding, x, (num_tasks, *x.shape[1:])), local
  )


def _concat(batches: Sequence[PyTree]) -> PyTree:
  return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *batches)


def pad_tasks(batch: PyTree, multiple: int) -> PyTree:
  """Pads a batch `[T, ...]` to a multiple of `multiple` tasks by repeating its last task.

  The padding tasks are real (finite) episodes, so they cannot make a step
  non-finite; callers drop their outputs (the first T rows are the batch's).
  """
  t = core.num_tasks(batch)
  extra = -t % multiple
  if not extra:
    return batch
  return jax.tree_util.tree_map(
    lambda x: np.concatenate([x, np.repeat(np.asarray(x)[-1:], extra, axis=0)], axis=0), batch
  )


def fetch(tree: PyTree) -> PyTree:
  """Copies a PyTree of (possibly multi-process) arrays to host numpy arrays.

  Replicated arrays are read from a local copy; arrays sharded across
  processes are gathered from all of them (a collective: every process must
  call it).
  """

  def local(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    if x.is_fully_replicated:
      return x.addressable_data(0)
    return multihost_utils.process_allgather(x, tiled=True)

  # One batched transfer for the whole tree (a leaf at a time is slow for many leaves).
  return jax.tree_util.tree_map(np.asarray, jax.device_get(jax.tree_util.tree_map(local, tree)))


def is_primary() -> bool:
  """Whether this is process 0, the one that writes logs, metrics and figures."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across all processes (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def check_shared_directory(path: str) -> None:
  """Checks that every process sees the same folder `path` (multi-host checkpoints need it).

  Process 0 writes a marker file; every other process must see it.

  Raises:
    RuntimeError: on a process that does not see process 0's marker.
  """
  if jax.process_count() == 1:
    return
  token = multihost_utils.broadcast_one_to_all(np.frombuffer(uuid.uuid4().bytes, np.uint8))
  marker = os.path.join(path, f".shared-{bytes(np.asarray(token)).hex()}")
  if is_primary():
    with open(marker, "w") as f:
      f.write("written by process 0 to check that every process sees this folder\n")
  sync("metalearn_shared_dir_written")
  seen = os.path.exists(marker)
  sync("metalearn_shared_dir_checked")
  if is_primary():
    os.remove(marker)
  if not seen:
    raise RuntimeError(
      f"process {jax.process_index()} does not see {path} as process 0 wrote it: a multi-host "
      "run needs a workdir on a file system every host mounts (NFS, Filestore, gcsfuse)"
    )


# --- Host cores on a CPU backend ----------------------------------------------------------------


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge
  except ImportError:  # pragma: no cover - a JAX without the module: assume not started
    return False
  started = getattr(xla_bridge, "backends_are_initialized", None)
  return bool(started()) if started is not None else False


def reserve_host_cores(num_host: int = 1) -> tuple[frozenset[int], frozenset[int]]:
  """Splits the process's cores between XLA's CPU thread pool and the calling Python thread.

  XLA:CPU sizes its compute thread pool by the cores the process may run on
  when its backend starts. This pins the process to all of its cores but the
  last `num_host` while JAX starts its backends, so the pool takes those
  ("compute cores"), then moves the calling thread to the `num_host` reserved
  ones ("host cores"). Task sampling, batch transfers and dispatch then run
  beside the compiled steps instead of taking a core from them; threads the
  caller starts later inherit the host cores.

  It pays off when a step is many small operations on few cores (the sinusoid
  MLP on 2 cores: 10-44% more training steps a second, docs/results.md).
  For large convolutions it takes a core away from the arithmetic. On a GPU
  or TPU it only moves CPU threads.

  Args:
    num_host: cores kept for the Python thread, taken from the end of the
      process's core list; at least one core must be left for compute.

  Returns:
    `(compute_cores, host_cores)`, the two sets of core ids.

  Raises:
    RuntimeError: when JAX has already started its backends (call this first,
      before anything touches a device), or the platform cannot pin threads
      (`os.sched_setaffinity` exists on Linux only).
    ValueError: when `num_host` < 1 or leaves no core for compute.
  """
  if not hasattr(os, "sched_setaffinity"):
    raise RuntimeError("reserving host cores needs os.sched_setaffinity (Linux only)")
  cores = sorted(os.sched_getaffinity(0))
  if not isinstance(num_host, int) or not 1 <= num_host < len(cores):
    raise ValueError(
      f"num_host={num_host!r}: needs an integer from 1 to {len(cores) - 1}, to leave a core "
      f"for compute (this process may run on {len(cores)} core(s): {cores})"
    )
  if _backends_started():
    raise RuntimeError(
      "reserve_host_cores must run before JAX starts its backends (before the first "
      "jax.devices(), array or jit call): XLA's CPU thread pool is sized once, at start"
    )
  compute, host = frozenset(cores[:-num_host]), frozenset(cores[-num_host:])
  os.sched_setaffinity(0, compute)
  try:
    jax.devices()  # starts the backends: XLA's pool threads inherit `compute`
  except BaseException:
    os.sched_setaffinity(0, cores)
    raise
  os.sched_setaffinity(0, host)
  return compute, host
