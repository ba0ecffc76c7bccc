"""`train_and_evaluate(config, workdir)`, `load_run(workdir)`: a config made into library calls.

Two task families: `sinusoid` (regression, MLP) and `omniglot` (N-way K-shot
classification on the Vinyals or Lake split of
`metalearn.data.omniglot.load_omniglot`). A config names its method
(`config.method`, a key of `metalearn.algorithms.REGISTRY`) and gives the
method's hyperparameters in `config.learner`, handed as keyword arguments to
the factory, whose signature holds the defaults (None in the block: the
default). Nothing here names a method: the network a factory is built on
follows from its first argument (`model`: the family's network with a head;
`embedding`: the family's embedding, or the factory's own default network
when it has one), and the arguments a family gives (`objective`, `ways`) are
passed where the factory takes them.

The binary (`experiments/meta_train.py`) and notebooks call this; nothing under
`metalearn/` sees a config object. Validation happens here first, so a bad
flag fails in one line before anything is compiled or written.
"""

from __future__ import annotations

import inspect
import json
import os
import time

import jax
import numpy as np
import optax
from ml_collections import config_dict

from experiments import families
from metalearn import algorithms, core, evaluation, learned_optim, parallel, plotting, training
from metalearn import episodes as ep
from metalearn.data import omniglot
from metalearn.data.omniglot import load_omniglot
from metalearn.data.sampler import EpisodicSampler
from metalearn.data.sinusoid import SineOrLine, Sinusoid
from metalearn.models import MLP, Conv4

TASKS = ("sinusoid", "omniglot")
IMAGE_SIZE = 28  # the size Omniglot is loaded at (load_omniglot's default)
OBJECTIVES = {"sinusoid": "mse", "omniglot": "cross_entropy"}
# `config.functions` of the sinusoid task: Finn et al.'s sinusoids, or PLATIPUS's
# ambiguous mix of noisy sinusoids and lines.
FUNCTIONS = {"sine": Sinusoid, "sine_line": SineOrLine}
_TASK_PARAMETERS = {"sine": ("A", "phase"), "sine_line": ("sine", "a", "b")}  # figure titles
# Fields that do not change what a run computes (how long, how often it logs or
# evaluates, where its data lie, how fast it runs): resuming with other values is
# allowed. Every other field (and the whole learner block, defaults resolved) is
# the run's identity.
NOT_IDENTITY = frozenset(
  {
    "num_steps",
    "eval_every",
    "checkpoint_every",
    "log_every",
    "eval_queries",
    "eval_steps",
    "eval_inner_steps",
    "eval_batch_size",
    "num_val_tasks",
    "num_eval_tasks",
    "steps_per_call",
    "host_cores",
    "num_devices",
    "data_dir",
    "zip_dir",
    "baseline",
    "baseline_method",
    "max_skipped_fraction",
  }
)
# Identity fields whose 0 means "off", which is what runs from before the field existed used.
ZERO_IS_OFF = ("outer_lr_halve_every",)


class ConfigError(ValueError):
  """A config (or workdir) the run cannot start with; its message is one line naming the flag."""


def _bad(field: str, value, why: str):
  raise ConfigError(f"--config.{field}={value!r}: {why}")


def _factory(method: str):
  if method not in algorithms.REGISTRY:
    _bad("method", method, f"unknown method; choose one of {', '.join(algorithms.REGISTRY)}")
  return algorithms.REGISTRY[method]


def learner_kwargs(config, *, verbose: bool = False) -> dict:
  """The keyword arguments `config.learner` gives the method's factory (None: left out).

  A set value of a hyperparameter the method does not have (a block written
  for another method, e.g. after `--config.method=...`) is dropped with a note.
  """
  accepted = list(algorithms.hyperparameters(config.method))
  if "inner_optimizer" in inspect.signature(_factory(config.method)).parameters:
    accepted.append("inner_optimizer")  # a name, made an optimizer by build_learner
  kwargs = {}
  for name, value in config.learner.items():
    if value is None:
      continue
    if name not in accepted:
      if verbose:
        print(
          f"note: --config.learner.{name}={value!r} is not a hyperparameter of "
          f"{config.method} ({', '.join(accepted) or 'it has none'}); ignored",
          flush=True,
        )
      continue
    kwargs[name] = value
  return kwargs


def _model(config, factory):
  """The network the factory is built on, from its first argument's name."""
  first = next(iter(inspect.signature(factory).parameters.values()))
  if first.name == "model":
    if config.task == "omniglot":
      return Conv4(ways=config.ways)
    return MLP(hidden=tuple(config.hidden), out=1)
  if config.task != "omniglot":
    regression = [
      m for m, f in algorithms.REGISTRY.items() if "model" in inspect.signature(f).parameters
    ]
    _bad(
      "method",
      config.method,
      f"learns an embedding for classification; sinusoid takes one of {', '.join(regression)}",
    )
  return None if first.default is None else Conv4(ways=None)


def build_learner(config, *, inner_steps: int | None = None, verbose: bool = False):
  """The learner `config.method` with `config.learner`'s hyperparameters (and `inner_steps`).

  Raises:
    ValueError: one line naming the field, for an unknown method or a value
      the factory refuses (each hyperparameter is checked by its factory).
  """
  factory = _factory(config.method)
  params = inspect.signature(factory).parameters
  kwargs = learner_kwargs(config, verbose=verbose)
  if inner_steps is not None and "inner_steps" in params:
    kwargs["inner_steps"] = inner_steps
  task_args = {"objective": OBJECTIVES[config.task], "ways": config.get("ways")}
  kwargs.update({k: v for k, v in task_args.items() if k in params})
  model = _model(config, factory)
  try:
    if isinstance(kwargs.get("inner_optimizer"), str):
      lr = kwargs.get("inner_lr", algorithms.hyperparameters(config.method).get("inner_lr"))
      kwargs["inner_optimizer"] = learned_optim.inner_optimizer(kwargs["inner_optimizer"], lr)
    return factory(model, **kwargs) if model is not None else factory(**kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"--config.learner ({config.method}): {e}") from None


def has_inner_steps(config) -> bool:
  """Whether the config's method adapts by inner steps (its factory takes `inner_steps`)."""
  return "inner_steps" in inspect.signature(_factory(config.method)).parameters


def changes_ways(config) -> bool:
  """Whether the config's learner scores any number of classes (its factory takes `ways`).

  A metric learner's theta is an embedding, whatever the episode's ways; a
  learner built on a model with a classifier head (`ways` outputs) is not.
  """
  return "ways" in inspect.signature(_factory(config.method)).parameters


def eval_steps(config) -> tuple[int, ...]:
  """Inner step counts reported by evaluation: the config's, or omniglot's (0, 1, eval steps)."""
  if config.task == "omniglot":
    return tuple(sorted({0, 1, config.eval_inner_steps}))
  return tuple(config.eval_steps)


def curve_learners(config):
  """`{k: learner with k inner steps}` for `eval_steps(config)`; one learner if it has none."""
  if not has_inner_steps(config):
    return build_learner(config)
  return {k: build_learner(config, inner_steps=k) for k in eval_steps(config)}


def evaluator(config) -> core.EvaluateFn:
  """The task family's evaluator of the config's learner (with its adaptation curve).

  A probabilistic learner (`algorithms.PROBABILISTIC`, whose predictor returns
  a distribution) is scored by its likelihood and interval coverage as well.
  """
  if config.method in algorithms.PROBABILISTIC:
    return evaluation.probabilistic_regression(curve_learners(config))
  return evaluation.supervised(curve_learners(config), OBJECTIVES[config.task])


def validate(config: config_dict.ConfigDict, workdir: str) -> None:
  """Raises `ConfigError` (a ValueError) naming the flag for any bad value; touches nothing on disk.

  `train_and_evaluate` calls it first; call it directly to check a config
  without training.
  """
  module = families.family(config.get("task"))
  if module is not None:
    module.validate(config, workdir)
    return
  if config.task not in TASKS:
    known = (*TASKS, *families.REGISTRY)
    _bad("task", config.task, f"unknown task; choose one of {', '.join(known)}")
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
      _bad(field, config[field], "must be a positive integer")
  for field in ("num_steps", "eval_every", "checkpoint_every"):
    if not isinstance(config[field], int) or config[field] < 0:
      _bad(field, config[field], "must be an integer >= 0")
  if not config.outer_lr > 0:
    _bad("outer_lr", config.outer_lr, "learning rates must be > 0")
  per_call = config.get("steps_per_call", 1)
  if not isinstance(per_call, int) or per_call <= 0:
    _bad("steps_per_call", per_call, "must be a positive integer (meta-steps per compiled call)")
  host_cores = config.get("host_cores", 0)
  if not isinstance(host_cores, int) or host_cores < 0:
    _bad("host_cores", host_cores, "must be an integer >= 0 (cores kept for the Python thread)")
  halve = config.get("outer_lr_halve_every", 0)
  if not isinstance(halve, int) or halve < 0:
    _bad("outer_lr_halve_every", halve, "must be an integer >= 0 (0: constant learning rate)")
  if config.task == "omniglot":
    if not isinstance(config.ways, int) or config.ways < 2:
      _bad("ways", config.ways, "must be an integer >= 2 (classes per episode)")
    if not isinstance(config.eval_inner_steps, int) or config.eval_inner_steps < 0:
      _bad("eval_inner_steps", config.eval_inner_steps, "must be an integer >= 0")
    if config.split_protocol not in omniglot.PROTOCOLS:
      _bad(
        "split_protocol", config.split_protocol, f"choose one of {', '.join(omniglot.PROTOCOLS)}"
      )
    for field in ("queries", "eval_queries"):
      if config.shots + config[field] > omniglot.NUM_DRAWINGS:
        _bad(
          field,
          config[field],
          f"--config.shots + --config.{field} = {config.shots + config[field]} exceeds the "
          f"{omniglot.NUM_DRAWINGS} drawings of each Omniglot character",
        )
  elif config.baseline and config.get("baseline_method") not in algorithms.REGISTRY:
    _bad("baseline_method", config.get("baseline_method"), "must name a registered method")
  elif not config.eval_steps or min(config.eval_steps) < 0:
    _bad("eval_steps", config.eval_steps, "must be a non-empty list of step counts >= 0")
  try:
    core.check_strategy(config.strategy, field="--config.strategy")
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.on_nonfinite not in ("raise", "skip"):
    _bad("on_nonfinite", config.on_nonfinite, "choose raise or skip")
  skipped = config.get("max_skipped_fraction", 0.1)
  if isinstance(skipped, bool) or not isinstance(skipped, int | float) or not 0 <= skipped <= 1:
    _bad("max_skipped_fraction", skipped, "must be a number in [0, 1]")
  if not isinstance(config.seed, int) or config.seed < 0:
    _bad("seed", config.seed, "must be an integer >= 0")
  if config.task == "sinusoid" and (not config.hidden or min(config.hidden) < 1):
    _bad("hidden", config.hidden, "must be a non-empty list of layer widths >= 1")
  if config.task == "sinusoid" and config.get("functions", "sine") not in FUNCTIONS:
    _bad("functions", config.functions, f"choose one of {', '.join(FUNCTIONS)}")
  build_learner(config)  # checks the method and every hyperparameter, where each is used
  _validate_devices(config)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir}: exists and is not a directory")
  check_resume(config, workdir)


def _validate_devices(config) -> None:
  for field in ("num_devices", "sample_shards"):
    if not isinstance(config[field], int) or config[field] < 0:
      _bad(field, config[field], "must be an integer >= 0 (0: the default)")
  available, processes = jax.device_count(), jax.process_count()
  if config.num_devices > available or (processes > 1 and config.num_devices not in (0, available)):
    _bad(
      "num_devices",
      config.num_devices,
      f"this job has {available} {jax.devices()[0].platform} device(s) in {processes} "
      f"process(es); use 0 for all of them{'' if processes > 1 else f' or 1..{available}'}",
    )
  devices = config.num_devices or available
  if config.meta_batch_size % devices:
    fits = max(d for d in range(1, devices + 1) if config.meta_batch_size % d == 0)
    multiple = -(-config.meta_batch_size // devices) * devices
    fewer = f"; or use fewer devices (e.g. --config.num_devices={fits})" if processes == 1 else ""
    _bad(
      "meta_batch_size",
      config.meta_batch_size,
      f"the meta-batch is sharded over {devices} {jax.devices()[0].platform} devices and "
      f"must be a multiple of {devices} (e.g. --config.meta_batch_size={multiple}){fewer}",
    )
  pieces = config.sample_shards or processes
  if pieces % processes or config.meta_batch_size % pieces:
    _bad(
      "sample_shards",
      config.sample_shards,
      f"must be a multiple of the {processes} processes and divide "
      f"--config.meta_batch_size={config.meta_batch_size}",
    )


def identity(config) -> dict:
  """What defines a run: every field but `NOT_IDENTITY`, the learner block with defaults filled.

  Resuming a workdir with another value of any of these is refused: it would
  change the computation or the data stream of the steps still to come.
  """
  plain = json.loads(config.to_json())
  out = {k: v for k, v in plain.items() if k not in NOT_IDENTITY and k != "learner"}
  for k in ZERO_IS_OFF:
    out[k] = out.get(k) or None
  if out.get("hidden") is not None:
    out["hidden"] = list(out["hidden"])
  out["learner"] = {**algorithms.hyperparameters(config.method), **learner_kwargs(config)}
  return out


def upgrade_legacy(saved: dict) -> dict:
  """A `config.json` written before learner blocks, in today's layout; others as they are.

  Such files hold the hyperparameters at the top level: `inner_lr`,
  `inner_steps` (null: the method's default), `remat`, and iMAML's
  `imaml_<name>`; they move into `learner` under the factory's names (0 as
  iMAML's clipping meant off, as it does now).
  """
  if "learner" in saved:
    return saved
  saved = dict(saved)
  learner = {}
  for name in ("inner_lr", "inner_steps", "remat"):
    if name in saved:
      learner[name] = saved.pop(name)
  for name in [k for k in saved if k.startswith("imaml_")]:
    learner[name[len("imaml_") :]] = saved.pop(name)
  known = saved.get("method") in algorithms.REGISTRY
  accepted = algorithms.hyperparameters(saved["method"]) if known else {}
  saved["learner"] = {k: v for k, v in learner.items() if k in accepted and v is not None}
  return saved


def check_resume(config, workdir: str) -> None:
  """Refuses a workdir holding a run with another identity, naming each field that differs.

  A workdir whose run saved no checkpoint (it stopped before its first step,
  e.g. on missing data) holds no run to protect: it is started afresh.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not has_checkpoint(workdir):
    return
  try:
    with open(path) as f:
      saved = upgrade_legacy(json.load(f))
  except (OSError, ValueError) as e:
    raise ConfigError(f"--workdir={workdir}: cannot read its config.json ({e})") from None
  mine = identity(config)
  previous = {k: v for k, v in saved.items() if k not in NOT_IDENTITY}
  if previous.get("method") in algorithms.REGISTRY:
    previous["learner"] = {
      **algorithms.hyperparameters(previous["method"]),
      **(previous.get("learner") or {}),
    }
  for k in ZERO_IS_OFF:
    previous[k] = previous.get(k) or None
  diff = []
  for k, v in mine.items():
    if k not in previous:
      continue  # a field older runs did not record: they ran with its default
    if k == "learner" and isinstance(previous[k], dict):
      theirs = previous[k]
      diff += [
        f"learner.{n}={theirs.get(n)!r} (now {w!r})" for n, w in v.items() if theirs.get(n) != w
      ]
    elif previous[k] != v:
      diff.append(f"{k}={previous[k]!r} (now {v!r})")
  if diff:
    raise ConfigError(
      f"--workdir={workdir} holds a run with other settings ({', '.join(diff)}); "
      "use a new --workdir to start a different run"
    )


def regression_tasks(config, queries: int):
  """The sinusoid task's sampler of `config.functions` (default "sine") with `queries` points."""
  return FUNCTIONS[config.get("functions", "sine")](shots=config.shots, queries=queries)


def sinusoid_samplers(config):
  """(train, validation, test) samplers of sinusoid tasks (or of `config.functions`)."""
  eval_tasks = regression_tasks(config, config.eval_queries)
  train_tasks = regression_tasks(config, config.queries)
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
    raise ConfigError(msg) from None


def outer_learning_rate(config) -> float | optax.Schedule:
  """`outer_lr`, halved every `outer_lr_halve_every` meta-steps when that is > 0.

  Snell et al. (2017) halve Adam's rate every 2,000 episodes; 0 (the default) keeps it constant.
  """
  every = config.get("outer_lr_halve_every", 0)
  if not every:
    return config.outer_lr
  return optax.exponential_decay(config.outer_lr, every, 0.5, staircase=True)


def outer_optimizer(config) -> optax.GradientTransformation:
  """The meta-optimizer of a run: Adam at `outer_learning_rate(config)`."""
  return optax.adam(outer_learning_rate(config))


def samplers(config, *, verbose: bool = True):
  """`(train sampler, validation sampler, test sampler)` for `config.task`."""
  if config.task == "omniglot":
    return omniglot_samplers(config, verbose=verbose)
  return sinusoid_samplers(config)


def _train(config, workdir, *, verbose=True):
  train_sampler, val_sampler, test_sampler = samplers(config, verbose=verbose)
  learner = build_learner(config, verbose=verbose)
  result = training.meta_train(
    learner,
    train_sampler,
    evaluate=evaluator(config),
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
    max_skipped_fraction=config.get("max_skipped_fraction", 0.1),
    verbose=verbose,
    mesh=parallel.make_mesh(config.num_devices),
    sample_shards=config.sample_shards or None,
    steps_per_call=config.get("steps_per_call", 1),
  )
  return result


def baseline_config(config) -> config_dict.ConfigDict:
  """The config of the baseline (`config.baseline_method`) with the same budget (the figure's)."""
  base = config_dict.ConfigDict(json.loads(config.to_json()))
  base.method = config.baseline_method
  wanted = algorithms.hyperparameters(base.method)
  base.learner = config_dict.ConfigDict(
    {k: v for k, v in config.learner.items() if k in wanted and k != "inner_steps"}
  )
  return base


def _figure_task(config):
  """The held-out task the figures draw: `(sampler, parameters, support split, grid [200, 1])`."""
  rng = np.random.default_rng([config.seed, 99])
  sampler = regression_tasks(config, 1)
  params = sampler.tasks(rng, 1)
  support = sampler.episodes_for(rng, *params).support
  support = type(support)(*(a[0] for a in support))
  return sampler, params, support, np.linspace(-5, 5, 200, dtype=np.float32)[:, None]


def _figure_title(config, params) -> str:
  functions = config.get("functions", "sine")
  names = _TASK_PARAMETERS[functions]
  values = ", ".join(f"{n}={float(v[0]):.2f}" for n, v in zip(names, params, strict=True))
  return f"{functions}, {config.shots}-shot: {values}"


def samples_figure(config, path, learner, theta) -> bool:
  """Draws the functions a sampling learner's predictive mixes; False (nothing drawn) for one."""
  sampler, params, support, x = _figure_task(config)
  pred = learner.adapt(theta, support, jax.random.PRNGKey(0))(x)
  if not hasattr(pred, "scale") or pred.mean.shape[0] < 2:
    return False
  plotting.plot_samples(
    path,
    x=x[:, 0],
    truth=sampler.function(*(p[0] for p in params), x[:, 0]),
    support=(support.x, support.y),
    samples=np.asarray(pred.mean),
    title=_figure_title(config, params),
  )
  return True


def sinusoid_figure(config, path, runs) -> None:
  """Draws one held-out task, its support points and each run's predictions."""
  sampler, params, support, x = _figure_task(config)
  curves = {}
  key = jax.random.PRNGKey(0)
  for label, (learners, theta) in runs.items():
    preds = plotting.adaptation_predictions(learners, theta, support, x, key)
    for k, y in preds.items():
      curves[f"{label}, {k} step{'s' if k != 1 else ''}"] = y
  plotting.plot_sinusoid(
    path,
    x=x[:, 0],
    truth=sampler.function(*(p[0] for p in params), x[:, 0]),
    support=(support.x, support.y),
    curves=curves,
    title=_figure_title(config, params),
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


def has_checkpoint(workdir: str) -> bool:
  """Whether `<workdir>/checkpoints` holds a saved step (a run that took steps)."""
  checkpoints = os.path.join(workdir, "checkpoints")
  return os.path.isdir(checkpoints) and any(s.isdigit() for s in os.listdir(checkpoints))


def write_config(config, workdir: str) -> None:
  """Writes `<workdir>/config.json`: the config, its learner block with defaults filled.

  A resumed run (the workdir holds a checkpoint; `validate` checked the
  identity) keeps the record as it is and appends to its `resumes` list the
  time and the fields whose values changed (e.g. a longer `num_steps`), so the
  file still describes the steps already taken.
  """
  path = os.path.join(workdir, "config.json")
  record = json.loads(config.to_json())
  record["learner"] = identity(config)["learner"]
  if os.path.exists(path) and has_checkpoint(workdir):
    with open(path) as f:
      saved = json.load(f)
    changed = {k: v for k, v in record.items() if k in NOT_IDENTITY and saved.get(k) != v}
    resume = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changed": changed}
    record = {**saved, "resumes": [*saved.get("resumes", []), resume]}
  training.write_json_atomic(path, record)


def train_and_evaluate(config: config_dict.ConfigDict, workdir: str) -> dict:
  """Meta-trains `config.method`, evaluates it, draws the figure; returns the eval summary.

  Writes into `workdir`: `checkpoints/`, `metrics.jsonl`, `tensorboard/`,
  `eval.json`, `config.json`, and for sinusoid `sinusoid.png` and (when
  `config.baseline`) the baseline's run (`config.baseline_method`, the
  pretrained transfer baseline in the sinusoid config) under `baseline/`. Omniglot
  runs report test `accuracy` in `eval.json` (for gradient-based methods the
  accuracy after `config.eval_inner_steps` inner steps; `accuracy@k` are kept
  too). On a multi-process job every process calls this; checkpoints are
  written collectively and process 0 alone writes the other files.
  """
  module = families.family(config.get("task"))
  if module is not None:  # a family of its own (experiments/families)
    return module.train_and_evaluate(config, workdir)
  validate(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_primary():
    write_config(config, workdir)
  result = _train(config, workdir)
  if config.task == "omniglot":
    summary = add_plain_accuracy(config, workdir, result.eval_summary)
    if parallel.is_primary():
      print(f"wrote {os.path.join(workdir, 'eval.json')}", flush=True)
    return summary
  plot_steps = (0, 1, 10)
  label = config.method
  theta = parallel.fetch(result.state.theta)
  runs = {label: ({k: build_learner(config, inner_steps=k) for k in plot_steps}, theta)}
  if config.baseline and config.method != config.baseline_method:
    base = baseline_config(config)
    base_result = _train(base, os.path.join(workdir, "baseline"))
    learners = {k: build_learner(base, inner_steps=k) for k in (0, 10)}
    runs[base.method] = (learners, parallel.fetch(base_result.state.theta))
  if parallel.is_primary():
    path = os.path.join(workdir, "sinusoid.png")
    sinusoid_figure(config, path, runs)
    print(f"wrote {os.path.join(workdir, 'eval.json')} and {path}", flush=True)
    samples = os.path.join(workdir, "samples.png")  # with the run's own inner steps
    if samples_figure(config, samples, build_learner(config), theta):
      print(f"wrote {samples}", flush=True)
  return result.eval_summary


def example_task(config) -> ep.Episode:
  """One task shaped like the run's (all zeros), to build theta's structure from."""
  if config.task == "omniglot":
    size = IMAGE_SIZE
    split = ep.make_split(
      np.zeros((config.ways, size, size, 1), np.float32), np.arange(config.ways, dtype=np.int32)
    )
    return ep.Episode(split, split)
  return core.task(regression_tasks(config, 1).sample(np.random.default_rng(0), 1), 0)


def load_config(workdir: str) -> config_dict.ConfigDict:
  """The config of the run in `workdir` (its `config.json`, older layouts upgraded).

  Raises:
    FileNotFoundError: the workdir or its config.json is missing.
    ValueError: config.json is unreadable or names an unknown method.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir={workdir}: no such folder")
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"{path} not found: --workdir must be a run written by experiments.meta_train"
    )
  try:
    with open(path) as f:
      saved = upgrade_legacy(json.load(f))
    config = config_dict.ConfigDict(saved)
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise ValueError(f"cannot read {path}: {e}") from e
  if config.get("method") not in algorithms.REGISTRY:
    raise ValueError(f"{path}: unknown method {config.get('method')!r}")
  return config


def load_run(workdir: str):
  """`(config, learner, theta)` of a trained run, for prediction, evaluation and notebooks.

  theta is read from the newest checkpoint that reads back whole; the outer
  optimizer is not rebuilt.

  Raises:
    FileNotFoundError: the workdir, its config.json or its checkpoints are missing.
    ValueError: config.json is unreadable.
  """
  config = load_config(workdir)
  if not has_checkpoint(workdir):
    raise FileNotFoundError(
      f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: the run has not saved one yet "
      "(train it first)"
    )
  learner = build_learner(config)
  theta = training.restore_theta(workdir, learner, example_task(config), config.seed)
  return config, learner, theta
