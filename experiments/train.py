"""`train_and_evaluate(config, workdir)`: a config turned into library calls.

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
from metalearn.data.sinusoid import Sinusoid
from metalearn.models import MLP

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
)
TASKS = ("sinusoid",)


def validate(config: config_dict.ConfigDict, workdir: str) -> None:
  """Raises ValueError naming the flag for any bad value; touches nothing on disk."""

  def bad(field, why):
    raise ValueError(f"--config.{field}={config[field]!r}: {why}")

  if config.task not in TASKS:
    bad("task", f"unknown task; choose one of {', '.join(TASKS)}")
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
  if config.inner_steps is not None and config.inner_steps < 0:
    bad("inner_steps", "must be >= 0")
  if not config.eval_steps or min(config.eval_steps) < 0:
    bad("eval_steps", "must be a non-empty list of step counts >= 0")
  if config.method == "imaml":
    if not config.imaml_lam > 0:
      bad("imaml_lam", "the proximal strength lambda must be > 0")
    if config.imaml_cg_steps < 1:
      bad("imaml_cg_steps", "must be >= 1")
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
    diff = [k for k in IDENTITY_FIELDS if previous.get(k) != mine[k]]
    if diff:
      raise ValueError(
        f"--workdir={workdir} holds a run with other settings "
        f"({', '.join(f'{k}={previous.get(k)!r}' for k in diff)}); "
        "use a new --workdir to start a different run"
      )


def _identity(config) -> dict:
  d = {k: config[k] for k in IDENTITY_FIELDS}
  d["hidden"] = list(d["hidden"])
  return d


def build_learner(config, method: str | None = None):
  """The learner named by `config.method` (or `method`) with the config's settings."""
  method = method or config.method
  steps = config.inner_steps
  if steps is None:
    steps = DEFAULT_INNER_STEPS.get(method, 1)
  kwargs = dict(
    inner_lr=config.inner_lr,
    inner_steps=steps,
    eval_steps=tuple(config.eval_steps),
    objective="mse",
  )
  if method in ("maml", "fomaml", "metasgd", "anil", "metacurvature"):
    kwargs["remat"] = config.remat
  if method == "imaml":
    kwargs.update(lam=config.imaml_lam, cg_steps=config.imaml_cg_steps, solver=config.imaml_solver)
  return algorithms.get(method)(MLP(hidden=tuple(config.hidden), out=1), **kwargs)


def _train(config, workdir, method, *, verbose=True):
  learner = build_learner(config, method)
  train_tasks = Sinusoid(shots=config.shots, queries=config.queries)
  eval_tasks = Sinusoid(shots=config.shots, queries=config.eval_queries)
  result = training.meta_train(
    learner,
    train_tasks.sample,
    optimizer=optax.adam(config.outer_lr),
    num_steps=config.num_steps,
    meta_batch_size=config.meta_batch_size,
    workdir=workdir,
    seed=config.seed,
    eval_sampler=eval_tasks.sample,
    eval_every=config.eval_every,
    checkpoint_every=config.checkpoint_every,
    log_every=config.log_every,
    num_val_tasks=config.num_val_tasks,
    num_eval_tasks=config.num_eval_tasks,
    strategy=config.strategy,
    on_nonfinite=config.on_nonfinite,
    verbose=verbose,
    mesh=parallel.make_mesh(config.num_devices),
    sample_shards=config.sample_shards or None,
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


def train_and_evaluate(config: config_dict.ConfigDict, workdir: str) -> dict:
  """Meta-trains `config.method`, evaluates it, draws the figure; returns the eval summary.

  Writes into `workdir`: `checkpoints/`, `metrics.jsonl`, `tensorboard/`,
  `eval.json`, `config.json`, `sinusoid.png`, and (when `config.baseline`) the
  pretrained baseline's run under `baseline/`. On a multi-process job every
  process calls this; checkpoints are written collectively and process 0
  alone writes the other files.
  """
  validate(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_primary():
    training.write_json_atomic(
      os.path.join(workdir, "config.json"), {**json.loads(config.to_json()), **_identity(config)}
    )
  learner, result = _train(config, workdir, config.method)
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
