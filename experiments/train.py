"""`train_and_evaluate(config, workdir)`: a config turned into library calls.

Two task families: `sinusoid` (regression, MLP) and `omniglot` (N-way K-shot
classification, Conv4 or the Relation Network's modules, on the Vinyals or
Lake split of `metalearn.data.omniglot.load_omniglot`).

The binary (`experiments/meta_train.py`) and notebooks call this; nothing under
`metalearn/` sees a config object. Validation happens here first, so a bad
flag fails in one line before anything is compiled or written.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import optax
from ml_collections import config_dict

from metalearn import algorithms, parallel, plotting, training
from metalearn.data import omniglot
from metalearn.data.omniglot import load_omniglot
from metalearn.data.sampler import EpisodicSampler
from metalearn.data.sinusoid import Sinusoid
from metalearn.models import MLP, Conv4

# Inner steps during meta-training when the config leaves `inner_steps` unset.
DEFAULT_INNER_STEPS = {"reptile": 5, "pretrain": 10, "imaml": 10}
# Fields that define a run: resuming a workdir with other values is refused.
IDENTITY_FIELDS = (
  "task",
  "method",
  "seed",
  "shots",
  "queries",
  "meta_batch_size",
  "hidden",
  "outer_lr",
  "inner_lr",
  "inner_steps",
  "remat",
  "strategy",
  "ways",
  "split_protocol",
  "outer_lr_halve_every",
)
# iMAML's own fields, part of an iMAML run's identity (other methods ignore them).
IMAML_IDENTITY_FIELDS = (
  "imaml_lam",
  "imaml_cg_steps",
  "imaml_solver",
  "imaml_damping",
  "imaml_lam_damping",
  "imaml_inner_clip",
)
# Identity fields whose 0 means "off", which is what runs from before the field
# existed used: 0 and a missing field compare equal.
ZERO_IS_OFF = ("outer_lr_halve_every", "imaml_damping", "imaml_lam_damping", "imaml_inner_clip")
TASKS = ("sinusoid", "omniglot")
# The MAML-family learners that take `remat`.
REMAT_METHODS = ("maml", "fomaml", "metasgd", "anil", "metacurvature")


def validate(config: config_dict.ConfigDict, workdir: str) -> None:
  """Raises ValueError naming the flag for any bad value; touches nothing on disk."""

  def bad(field, why):
    raise ValueError(f"--config.{field}={config[field]!r}: {why}")

  if config.task not in TASKS:
    bad("task", f"unknown task; choose one of {', '.join(TASKS)}")
  if config.task == "omniglot":
    if config.method not in algorithms.REGISTRY:
      bad("method", f"unknown method; choose one of {', '.join(algorithms.REGISTRY)}")
  else:
    regression = [m for m in algorithms.REGISTRY if m not in algorithms.CLASSIFICATION_ONLY]
    if config.method in algorithms.CLASSIFICATION_ONLY:
      bad("method", f"is a classification method; sinusoid takes one of {', '.join(regression)}")
    if config.method not in algorithms.REGISTRY:
      bad("method", f"unknown method; choose one of {', '.join(regression)}")
  for field in (
    "shots",
    "queries",
    "eval_queries",
    "meta_batch_size",
    "num_eval_tasks",
    "num_val_tasks",
    "log_every",
  ):
    if not isinstance(config[field], int) or config[field] <= 0:
      bad(field, "must be a positive integer")
  for field in ("num_steps", "eval_every", "checkpoint_every"):
    if not isinstance(config[field], int) or config[field] < 0:
      bad(field, "must be an integer >= 0")
  for field in ("outer_lr", "inner_lr"):
    if not config[field] > 0:
      bad(field, "learning rates must be > 0")
  per_call = config.get("steps_per_call", 1)
  if not isinstance(per_call, int) or per_call <= 0:
    bad("steps_per_call", "must be a positive integer (meta-steps per compiled call)")
  host_cores = config.get("host_cores", 0)
  if not isinstance(host_cores, int) or host_cores < 0:
    bad("host_cores", "must be an integer >= 0 (cores kept for the Python thread; 0: none)")
  halve = config.get("outer_lr_halve_every", 0)
  if not isinstance(halve, int) or halve < 0:
    bad("outer_lr_halve_every", "must be an integer >= 0 (0: constant learning rate)")
  if config.inner_steps is not None and config.inner_steps < 0:
    bad("inner_steps", "must be >= 0")
  if config.task == "omniglot":
    if not isinstance(config.ways, int) or config.ways < 2:
      bad("ways", "must be an integer >= 2 (classes per episode)")
    if not isinstance(config.eval_inner_steps, int) or config.eval_inner_steps < 0:
      bad("eval_inner_steps", "must be an integer >= 0")
    if config.split_protocol not in omniglot.PROTOCOLS:
      bad("split_protocol", f"choose one of {', '.join(omniglot.PROTOCOLS)}")
    for field in ("queries", "eval_queries"):
      if config.shots + config[field] > omniglot.NUM_DRAWINGS:
        bad(
          field,
          f"--config.shots + --config.{field} = {config.shots + config[field]} exceeds the "
          f"{omniglot.NUM_DRAWINGS} drawings of each Omniglot character",
        )
  elif not config.eval_steps or min(config.eval_steps) < 0:
    bad("eval_steps", "must be a non-empty list of step counts >= 0")
  if config.method == "imaml":
    if not config.imaml_lam > 0:
      bad("imaml_lam", "the proximal strength lambda must be > 0")
    if config.imaml_cg_steps < 1:
      bad("imaml_cg_steps", "must be >= 1")
    if not config.get("imaml_damping", 0.0) >= 0:
      bad("imaml_damping", "must be >= 0")
    if not config.get("imaml_lam_damping", 0.0) >= 0:
      bad("imaml_lam_damping", "must be >= 0")
    if not config.get("imaml_inner_clip", 0.0) >= 0:
      bad("imaml_inner_clip", "must be >= 0 (0: no clipping)")
  for field in ("num_devices", "sample_shards"):
    if not isinstance(config[field], int) or config[field] < 0:
      bad(field, "must be an integer >= 0 (0: the default)")
  available, processes = jax.device_count(), jax.process_count()
  if config.num_devices > available or (processes > 1 and config.num_devices not in (0, available)):
    bad(
      "num_devices",
      f"this job has {available} {jax.devices()[0].platform} device(s) in {processes} "
      f"process(es); use 0 for all of them{'' if processes > 1 else f' or 1..{available}'}",
    )
  devices = config.num_devices or available
  if config.meta_batch_size % devices:
    fits = max(d for d in range(1, devices + 1) if config.meta_batch_size % d == 0)
    multiple = -(-config.meta_batch_size // devices) * devices
    fewer = f"; or use fewer devices (e.g. --config.num_devices={fits})" if processes == 1 else ""
    bad(
      "meta_batch_size",
      f"the meta-batch is sharded over {devices} {jax.devices()[0].platform} devices and "
      f"must be a multiple of {devices} (e.g. --config.meta_batch_size={multiple}){fewer}",
    )
  pieces = config.sample_shards or processes
  if pieces % processes or config.meta_batch_size % pieces:
    bad(
      "sample_shards",
      f"must be a multiple of the {processes} processes and divide "
      f"--config.meta_batch_size={config.meta_batch_size}",
    )
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir}: exists and is not a directory")
  saved = os.path.join(workdir, "config.json")
  if os.path.exists(saved):
    with open(saved) as f:
      previous = json.load(f)
    mine = _identity(config)
    diff = [k for k in mine if _normal(k, previous.get(k)) != mine[k]]
    if diff:
      raise ValueError(
        f"--workdir={workdir} holds a run with other settings "
        f"({', '.join(f'{k}={previous.get(k)!r}' for k in diff)}); "
        "use a new --workdir to start a different run"
      )


def _normal(field: str, value):
  """`value` as the identity compares it: None for 0 (off) in a `ZERO_IS_OFF` field."""
  return (value or None) if field in ZERO_IS_OFF else value


def _identity(config) -> dict:
  """The identity fields; those a task does not have (e.g. omniglot's `hidden`) are None.

  An iMAML run's identity also holds its `imaml_*` fields: resuming it with
  another lambda or linear system would silently change the meta-gradient.
  """
  fields = IDENTITY_FIELDS + (IMAML_IDENTITY_FIELDS if config.method == "imaml" else ())
  d = {k: _normal(k, config.get(k)) for k in fields}
  if d["hidden"] is not None:
    d["hidden"] = list(d["hidden"])
  return d


def eval_steps(config) -> tuple[int, ...]:
  """Inner step counts reported by evaluation: the config's, or omniglot's (0, 1, eval steps)."""
  if config.task == "omniglot":
    return tuple(sorted({0, 1, config.eval_inner_steps}))
  return tuple(config.eval_steps)


def build_learner(config, method: str | None = None):
  """The learner named by `config.method` (or `method`) with the config's settings.

  Sinusoid: an MLP regressor. Omniglot: ProtoNets / Matching Networks over a
  `Conv4(ways=None)` embedding, Relation Networks with their default modules,
  and the gradient-based methods over `Conv4(ways=config.ways)` with a
  cross-entropy objective.
  """
  method = method or config.method
  if method in algorithms.CLASSIFICATION_ONLY:
    if method == "relation":
      return algorithms.relation(ways=config.ways)
    return algorithms.get(method)(Conv4(ways=None), ways=config.ways)
  steps = config.inner_steps
  if steps is None:
    steps = DEFAULT_INNER_STEPS.get(method, 1)
  classify = config.task == "omniglot"
  kwargs = dict(
    inner_lr=config.inner_lr,
    inner_steps=steps,
    eval_steps=eval_steps(config),
    objective="cross_entropy" if classify else "mse",
  )
  if method in REMAT_METHODS:
    kwargs["remat"] = config.remat
  if method == "imaml":
    kwargs.update(
      lam=config.imaml_lam,
      cg_steps=config.imaml_cg_steps,
      solver=config.imaml_solver,
      damping=config.get("imaml_damping", 0.0),
      lam_damping=config.get("imaml_lam_damping", 0.0),
      inner_clip=config.get("imaml_inner_clip", 0.0) or None,
    )
  model = Conv4(ways=config.ways) if classify else MLP(hidden=tuple(config.hidden), out=1)
  return algorithms.get(method)(model, **kwargs)


def sinusoid_samplers(config):
  """(train, validation, test) samplers of sinusoid tasks."""
  eval_tasks = Sinusoid(shots=config.shots, queries=config.eval_queries)
  train_tasks = Sinusoid(shots=config.shots, queries=config.queries)
  return train_tasks.sample, eval_tasks.sample, eval_tasks.sample


def omniglot_samplers(config, *, verbose: bool = True):
  """(train, validation, test) `EpisodicSampler`s over the Omniglot splits.

  Validation episodes come from the "val" split; a split protocol without one
  (Lake's, by default) validates on "test" (those numbers are only logged,
  never used to choose a checkpoint).

  Raises:
    ValueError: one line naming the flags when the splits cannot hold the
      episodes (e.g. more ways than a split has classes).
  """
  splits = load_omniglot(
    config.data_dir or None, zip_dir=config.zip_dir or None, split_protocol=config.split_protocol
  )
  if "val" not in splits and verbose:
    print(f"note: the {config.split_protocol!r} split has no 'val'; validating on 'test'")
  val_split = "val" if "val" in splits else "test"

  def sampler(split, queries):
    flags = f"--config.ways={config.ways} --config.shots={config.shots} (queries {queries})"
    return split_sampler(splits, split, config.ways, config.shots, queries, flags)

  return (
    sampler("train", config.queries),
    sampler(val_split, config.eval_queries),
    sampler("test", config.eval_queries),
  )


def split_sampler(
  splits: dict, split: str, ways: int, shots: int, queries: int, flags: str
) -> EpisodicSampler:
  """`EpisodicSampler` over `splits[split]`; a split too small raises one line naming `flags`."""
  try:
    return EpisodicSampler(splits[split], ways, shots, queries)
  except ValueError as e:
    msg = f"{flags}: the omniglot {split} split cannot hold these episodes: {e}"
    raise ValueError(msg) from None


def outer_learning_rate(config) -> float | optax.Schedule:
  """`outer_lr`, halved every `outer_lr_halve_every` meta-steps when that is > 0.

  Snell et al. (2017) halve Adam's rate every 2,000 episodes; 0 (the default) keeps it constant.
  """
  every = config.get("outer_lr_halve_every", 0)
  if not every:
    return config.outer_lr
  return optax.exponential_decay(config.outer_lr, every, 0.5, staircase=True)


def outer_optimizer(config) -> optax.GradientTransformation:
  """The meta-optimizer of a run: Adam at `outer_learning_rate(config)`.

  Restoring a checkpoint needs the same optimizer (its state's structure), so
  evaluation and prediction build it here too.
  """
  return optax.adam(outer_learning_rate(config))


def build_task(config, method: str | None = None, *, verbose: bool = True):
  """`(train sampler, validation sampler, test sampler, learner)` for `config.task`."""
  if config.task == "omniglot":
    samplers = omniglot_samplers(config, verbose=verbose)
  else:
    samplers = sinusoid_samplers(config)
  return (*samplers, build_learner(config, method))


def _train(config, workdir, method, *, verbose=True):
  train_sampler, val_sampler, test_sampler, learner = build_task(config, method, verbose=verbose)
  result = training.meta_train(
    learner,
    train_sampler,
    optimizer=outer_optimizer(config),
    num_steps=config.num_steps,
    meta_batch_size=config.meta_batch_size,
    workdir=workdir,
    seed=config.seed,
    eval_sampler=test_sampler,
    val_sampler=val_sampler,
    eval_every=config.eval_every,
    checkpoint_every=config.checkpoint_every,
    log_every=config.log_every,
    num_val_tasks=config.num_val_tasks,
    num_eval_tasks=config.num_eval_tasks,
    eval_batch_size=config.get("eval_batch_size", 100),
    strategy=config.strategy,
    on_nonfinite=config.on_nonfinite,
    verbose=verbose,
    mesh=parallel.make_mesh(config.num_devices),
    sample_shards=config.sample_shards or None,
    steps_per_call=config.get("steps_per_call", 1),
  )
  return learner, result


def sinusoid_figure(config, path, runs) -> None:
  """Draws one held-out sinusoid, its support points and each run's predictions."""
  rng = np.random.default_rng([config.seed, 99])
  sampler = Sinusoid(shots=config.shots, queries=1)
  amplitude, phase = sampler.tasks(rng, 1)
  support = sampler.episodes_for(rng, amplitude, phase).support
  support = type(support)(*(a[0] for a in support))
  x = np.linspace(-5, 5, 200, dtype=np.float32)[:, None]
  curves = {}
  key = jax.random.PRNGKey(0)
  for label, (learner, theta, steps) in runs.items():
    preds = plotting.adaptation_predictions(learner, theta, support, x, steps, key)
    for k, y in preds.items():
      curves[f"{label}, {k} step{'s' if k != 1 else ''}"] = y
  plotting.plot_sinusoid(
    path,
    x=x[:, 0],
    truth=Sinusoid.function(amplitude[0], phase[0], x[:, 0]),
    support=(support.x, support.y),
    curves=curves,
    title=f"sinusoid, {config.shots}-shot: A={amplitude[0]:.2f}, phase={phase[0]:.2f}",
  )


def with_plain_accuracy(config, summary: dict) -> dict:
  """`summary` with `accuracy` = `accuracy@{eval_inner_steps}` where only the latter is there."""
  if "accuracy" in summary:
    return summary
  return {**summary, "accuracy": summary[f"accuracy@{config.eval_inner_steps}"]}


def add_plain_accuracy(config, workdir: str, summary: dict) -> dict:
  """Omniglot, gradient-based methods: `accuracy` = `accuracy@{eval_inner_steps}`.

  Their evaluation reports `accuracy@k` per inner step count k; the plain name
  (what the metric learners report) is added to `summary` and to
  `<workdir>/eval.json` (rewritten atomically, by process 0).
  """
  if "accuracy" in summary:
    return summary
  summary = with_plain_accuracy(config, summary)
  if parallel.is_primary():
    path = os.path.join(workdir, "eval.json")
    with open(path) as f:
      report = json.load(f)
    report["metrics"] = summary
    report["accuracy_inner_steps"] = config.eval_inner_steps
    training.write_json_atomic(path, report)
  return summary


def train_and_evaluate(config: config_dict.ConfigDict, workdir: str) -> dict:
  """Meta-trains `config.method`, evaluates it, draws the figure; returns the eval summary.

  Writes into `workdir`: `checkpoints/`, `metrics.jsonl`, `tensorboard/`,
  `eval.json`, `config.json`, and for sinusoid `sinusoid.png` and (when
  `config.baseline`) the pretrained baseline's run under `baseline/`. Omniglot
  runs report test `accuracy` in `eval.json` (for gradient-based methods the
  accuracy after `config.eval_inner_steps` inner steps; `accuracy@k` are kept
  too). On a multi-process job every process calls this; checkpoints are
  written collectively and process 0 alone writes the other files.
  """
  validate(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_primary():
    training.write_json_atomic(
      os.path.join(workdir, "config.json"), {**json.loads(config.to_json()), **_identity(config)}
    )
  learner, result = _train(config, workdir, config.method)
  if config.task == "omniglot":
    summary = add_plain_accuracy(config, workdir, result.eval_summary)
    if parallel.is_primary():
      print(f"wrote {os.path.join(workdir, 'eval.json')}", flush=True)
    return summary
  runs = {
    config.method.upper() if config.method != "pretrain" else "pretrained": (
      learner,
      parallel.fetch(result.state.theta),
      (0, 1, 10),
    )
  }
  if config.baseline and config.method != "pretrain":
    base_learner, base = _train(config, os.path.join(workdir, "baseline"), "pretrain")
    runs["pretrained"] = (base_learner, parallel.fetch(base.state.theta), (0, 10))
  if parallel.is_primary():
    path = os.path.join(workdir, "sinusoid.png")
    sinusoid_figure(config, path, runs)
    print(f"wrote {os.path.join(workdir, 'eval.json')} and {path}", flush=True)
  return result.eval_summary
