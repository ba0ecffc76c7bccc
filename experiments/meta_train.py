r"""Meta-trains one method on one task family from a config.

  python -m experiments.meta_train --config=experiments/configs/sinusoid.py \
      --workdir=runs/sinusoid_maml [--config.method=metasgd --config.shots=5]

Running the same command again resumes from the last checkpoint in --workdir.
On SIGTERM the run saves a checkpoint at its last completed step, prints where
it stopped and exits with status 143; the same command resumes from there.
Expected failures (divergence, another process on the workdir, an unwritable
workdir, unreadable data) print one line `error: ...` and exit with status 1
(--verbose: with the traceback).

The same command runs on one CPU, one or several GPUs, a TPU, and on every
process of a multi-host job (TPU-VM pod, SLURM cluster): there the binary first
calls `jax.distributed.initialize()`, JAX's multi-controller runtime, when the
launch environment asks for it (see --distributed, and launch/README.md):

  # each of N processes (SLURM and TPU-VM pods fill these in themselves):
  python -m experiments.meta_train --config=... --workdir=/shared/run \
      --coordinator_address=host0:1234 --num_processes=N --process_id=i
"""

from __future__ import annotations

import difflib
import errno
import importlib.util
import os
import sys
from collections.abc import Mapping

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import train
from metalearn import parallel, training

# The exit status after SIGTERM (128 + 15, as a process killed by it): the run
# stopped early, with a checkpoint to resume from.
PREEMPTED_EXIT_CODE = 143

_CONFIG = config_flags.DEFINE_config_file("config", lock_config=True, help_string="config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder (checkpoints, metrics, eval.json)")
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "on", "off"],
  "Multi-process runs (jax.distributed.initialize). auto: initialize when a coordinator, "
  "process count or process id is given (flags or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES "
  "/ JAX_PROCESS_ID), or under a multi-task srun or mpirun; else one process. on: always "
  "initialize, letting JAX detect what is not given (TPU-VM pods, SLURM, Open MPI, Kubernetes). "
  "off: one process.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0's coordinator (env JAX_COORDINATOR_ADDRESS)"
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "number of processes of the job (env JAX_NUM_PROCESSES)"
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "this process's index, 0..num_processes-1 (env JAX_PROCESS_ID)"
)
_VERBOSE = flags.DEFINE_bool(
  "verbose",
  False,
  "show the traceback of expected failures too (divergence, a locked or unwritable workdir, "
  "bad data), which are otherwise one line `error: ...`",
)
flags.mark_flags_as_required(["config", "workdir"])


def distributed_args(
  mode: str,
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  environ: Mapping[str, str],
) -> dict | None:
  """Keyword arguments for `jax.distributed.initialize`, or None for one process.

  Args:
    mode: `auto`, `on` or `off` (see the --distributed flag).
    coordinator_address: the flag, else `JAX_COORDINATOR_ADDRESS`.
    num_processes: the flag, else `JAX_NUM_PROCESSES`.
    process_id: the flag, else `JAX_PROCESS_ID`.
    environ: the environment (`os.environ`).

  Returns:
    The arguments that were given (JAX detects the others on TPU-VM pods,
    SLURM and Open MPI), or None when the run is a single process.

  Raises:
    ValueError: for an unknown mode, a malformed variable, or distribution
      settings under `--distributed=off`.
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"--distributed={mode!r}: choose auto, on or off")

  def from_env(value, name, kind):
    if value is not None or not environ.get(name):
      return value
    try:
      return kind(environ[name])
    except ValueError:
      raise ValueError(f"{name}={environ[name]!r} is not a valid {kind.__name__}") from None

  args = {
    "coordinator_address": from_env(coordinator_address, "JAX_COORDINATOR_ADDRESS", str),
    "num_processes": from_env(num_processes, "JAX_NUM_PROCESSES", int),
    "process_id": from_env(process_id, "JAX_PROCESS_ID", int),
  }
  given = {k: v for k, v in args.items() if v is not None}
  if mode == "off":
    if given:
      raise ValueError(f"--distributed=off, but {', '.join(given)} given: drop one or the other")
    return None
  if mode == "auto" and not given:
    srun = (
      "SLURM_PROCID" in environ
      and int(environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1"))) > 1
    )
    mpirun = int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    if not (srun or mpirun):
      return None
  return given


def apply_host_cores(num_host: int) -> None:
  """Applies `--config.host_cores` (see `parallel.reserve_host_cores`) before JAX starts.

  Where it cannot apply (not Linux, too few cores, JAX already started) it says
  so and training goes on with XLA's pool on every core; on a GPU or TPU backend
  the Python thread gets every core back. The setting changes speed only,
  never results.
  """
  if not isinstance(num_host, int) or num_host <= 0:
    return  # 0: off; a bad value is reported by train.validate
  try:
    compute, host = parallel.reserve_host_cores(num_host)
  except (RuntimeError, ValueError) as e:
    print(f"note: --config.host_cores={num_host} not applied: {e}", flush=True)
    return
  backend = jax.default_backend()
  if backend != "cpu":  # steps run on the accelerator: give the Python thread its cores back
    os.sched_setaffinity(0, compute | host)
    print(
      f"note: --config.host_cores={num_host} is for a CPU backend; on {backend} the Python "
      "thread keeps every core",
      flush=True,
    )
    return
  print(
    f"XLA's CPU pool on cores {sorted(compute)}, this Python thread on {sorted(host)} "
    f"(--config.host_cores={num_host})",
    flush=True,
  )


def expected_failure(e: BaseException, workdir: str) -> str | None:
  """The one-line message of an expected failure (bad data, divergence, ...); None for a bug.

  Expected: divergence and too many skipped steps (`FloatingPointError`),
  another process on the workdir, a checkpoint that cannot be written, an
  unwritable workdir (an `OSError` on a path inside it, a full disk or a
  read-only file system), a missing file, and the errors the data loaders and
  the training loop raise on purpose (`ValueError`, `ImportError`,
  `RuntimeError` raised in `metalearn/data` or `metalearn/training`).
  """
  message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
  if isinstance(
    e, (FloatingPointError, training.WorkdirLockedError, training.CheckpointWriteError)
  ):
    return message
  if isinstance(e, FileNotFoundError):
    return message
  if isinstance(e, OSError):
    inside = [
      f
      for f in (e.filename, e.filename2)
      if f is not None
      and os.path.abspath(os.fsdecode(f)).startswith(os.path.abspath(workdir).rstrip(os.sep))
    ]
    if inside or e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
      return f"cannot write in --workdir={workdir}: {message}"
    return None
  if isinstance(e, (ValueError, ImportError, RuntimeError)):
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
      tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename if tb is not None else ""
    parts = os.path.normpath(where).split(os.sep)
    if "metalearn" in parts and parts[parts.index("metalearn") + 1] in ("data", "training"):
      return message
  return None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # progress lines are printed; keep orbax quiet
  try:
    dist = distributed_args(
      _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, os.environ
    )
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  if dist is not None:  # before anything touches a device
    jax.distributed.initialize(**dist)
  apply_host_cores(_CONFIG.value.get("host_cores", 0))  # before JAX starts its backends
  if dist is not None:
    print(
      f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local, "
      f"{jax.device_count()} global {jax.devices()[0].platform} devices",
      flush=True,
    )
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)  # validates before it writes
  except train.ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  except training.Preempted as e:  # SIGTERM: a checkpoint was saved; the same command resumes
    print(str(e), file=sys.stderr, flush=True)
    raise SystemExit(PREEMPTED_EXIT_CODE) from None
  except Exception as e:
    _fail(e)


def _fail(e: Exception) -> None:
  """Exits with one line `error: ...` for an expected failure; re-raises a bug (or --verbose)."""
  message = expected_failure(e, _WORKDIR.value)
  if message is None or _VERBOSE.value:
    raise e
  raise SystemExit(f"error: {message}") from None


# Flags of the layout before learner blocks: the method's hyperparameters were
# top-level fields (`--config.inner_lr`, `--config.imaml_lam`, ...).
_FLAT_LEARNER_FIELDS = ("inner_lr", "inner_steps", "remat")


def upgrade_argv(argv: list[str]) -> tuple[list[str], list[str]]:
  """Command lines written for the flat config layout, in today's spelling, with a note each.

  `--config.method=X` becomes the config file's argument (`--config=F:X`, so the
  learner block holds X's hyperparameters); `--config.inner_lr=...`,
  `--config.inner_steps=...`, `--config.remat=...` and `--config.imaml_<name>=...`
  become `--config.learner.<name>=...`, dropped (with a note) where the method
  has no such hyperparameter, as the flat layout ignored them.

  Returns:
    `(argv, notes)`; argv unchanged when it holds none of these.
  """
  from experiments.configs import _common
  from metalearn import algorithms

  out, notes, method, config_at = [], [], None, None
  for arg in argv:
    name, eq, value = arg.partition("=")
    if name == "--config.method" and eq and value in algorithms.REGISTRY:
      method = value  # an unknown name stays a field, for validation to name it
      continue
    if name == "--config" and eq:
      config_at = len(out)
    out.append(arg)
  if method is not None and config_at is not None:
    path, _, extra = out[config_at][len("--config=") :].partition(":")
    parts = [p for p in extra.split(",") if p and p not in algorithms.REGISTRY]
    out[config_at] = f"--config={path}:{','.join([method, *parts])}"
    notes.append(f"--config.method={method} is read as {out[config_at]}")
  elif method is not None:
    out.append(f"--config.method={method}")
  current = method
  if current is None and config_at is not None:
    extra = out[config_at].partition(":")[2]
    # A family of experiments/families names its own methods: only algorithms' count here.
    known = [p for p in extra.split(",") if p == "smoke" or p in algorithms.REGISTRY]
    current, _ = _common.parse_arg(",".join(known), None) if known else (None, False)
  accepted = algorithms.hyperparameters(current) if current in algorithms.REGISTRY else None
  upgraded = []
  for arg in out:
    name, eq, value = arg.partition("=")
    field = name[len("--config.") :] if name.startswith("--config.") else ""
    if eq and (field in _FLAT_LEARNER_FIELDS or field.startswith("imaml_")):
      new = field[len("imaml_") :] if field.startswith("imaml_") else field
      if accepted is not None and new not in accepted:
        notes.append(f"{arg} is not a hyperparameter of {current}; ignored")
        continue
      upgraded.append(f"--config.learner.{new}={value}")
      notes.append(f"{arg} is now --config.learner.{new}={value}")
      continue
    upgraded.append(arg)
  return upgraded, notes


def _field_paths(config, prefix: str = "") -> list[str]:
  """Every field of a ConfigDict as a dotted path (`learner.lam`, `shots`)."""
  out = []
  for name, value in config.items():
    path = f"{prefix}{name}"
    out.append(path)
    if hasattr(value, "items") and not isinstance(value, dict | str):
      out += _field_paths(value, f"{path}.")
  return out


def explain_override_error(argv: list[str], error: BaseException) -> str:
  """One line for a `--config.<field>=...` that ml_collections could not apply.

  An unknown field is named with the config file and the closest known
  fields; a hyperparameter of another method says which methods have it.
  """
  from metalearn import algorithms

  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  overrides = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if spec is not None:
    try:
      path, _, arg = spec.partition(":")
      module_spec = importlib.util.spec_from_file_location("_config_file", path)
      module = importlib.util.module_from_spec(module_spec)
      module_spec.loader.exec_module(module)
      config = module.get_config(arg or None)
    except Exception:  # the file itself is broken: say that
      return f"--config={spec}: cannot build the config ({type(error).__name__}: {error})"
    known = _field_paths(config)
    for field in overrides:
      if field in known:
        continue
      where = f"--config.{field}: unknown config field {field!r} for {spec}"
      leaf = field.rsplit(".", 1)[-1]
      if field.startswith("learner."):
        method = config.get("method")
        others = [m for m in algorithms.REGISTRY if leaf in algorithms.hyperparameters(m)]
        hint = f"{method} takes {', '.join(config.learner) or 'no hyperparameters'}"
        if others:
          owners = ", ".join(others)
          hint += f"; {leaf} is a hyperparameter of {owners} (--config={path}:{others[0]})"
        return f"{where}; {hint}"
      close = difflib.get_close_matches(field, known, n=3, cutoff=0.6)
      close += [k for k in known if k.endswith(f".{leaf}") and k not in close]
      hint = f"; did you mean {' or '.join(close)}?" if close else ""
      return f"{where}{hint}"
  return f"cannot apply the config overrides ({type(error).__name__}: {error})"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a config override that cannot apply turned into one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # a value that does not parse, an unknown flag
    raise SystemExit(f"error: {e}") from None
  except Exception as e:
    raise SystemExit(f"error: {explain_override_error(argv, e)}") from None


if __name__ == "__main__":
  sys.argv, _notes = upgrade_argv(sys.argv)
  for _note in _notes:
    print(f"note: {_note}", flush=True)
  app.run(main, flags_parser=parse_flags)
