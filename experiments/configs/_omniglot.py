"""Fields shared by the Omniglot configs (`<method>_omniglot.py`); not a config itself."""

from ml_collections import config_dict

from experiments.configs import _common


def base(method: str) -> config_dict.ConfigDict:
  """The fields every Omniglot config sets; each config then sets its paper's values.

  `learner` is left for the config to fill (`_common.learner_block(method, ...)`).
  """
  c = config_dict.ConfigDict()
  c.task = "omniglot"
  c.method = method
  c.seed = 0
  c.num_steps = 60_000
  c.eval_every = 5_000
  c.checkpoint_every = 5_000
  c.log_every = 500

  c.ways = 5
  c.shots = 1
  c.queries = 1  # per class, training episodes
  c.eval_queries = 1  # per class, validation and test episodes
  c.meta_batch_size = 32

  c.outer_lr = 1e-3
  c.outer_lr_halve_every = 0  # > 0: halve outer_lr every this many meta-steps
  # The method's hyperparameters (keyword arguments of its factory; None: its default).
  c.learner = _common.learner_block(method)
  c.eval_inner_steps = 3  # gradient-based methods: `accuracy` in eval.json is `accuracy@<this>`

  # Data: load_omniglot(data_dir or None, zip_dir=zip_dir or None, ...): an
  # empty data_dir is TFDS's default folder ($TFDS_DATA_DIR or
  # ~/tensorflow_datasets); an empty zip_dir is $METALEARN_OMNIGLOT_DIR, else
  # TFDS downloads the authors' zips.
  c.split_protocol = "vinyals"
  c.data_dir = ""
  c.zip_dir = ""

  c.num_val_tasks = 100
  c.num_eval_tasks = 1000
  c.eval_batch_size = 100
  # "auto": vmap, except convolutional learners on a CPU, which take map (one task
  # at a time; measured fastest; docs/results.md "How tasks are batched").
  c.strategy = "auto"
  # Meta-steps per compiled call; > 1 pays only where a step takes well under
  # a millisecond, which a Conv4 step never does.
  c.steps_per_call = 1
  # Cores kept for the Python thread, the rest for XLA's CPU pool
  # (parallel.reserve_host_cores); 0: XLA takes every core, which convolutions need.
  c.host_cores = 0
  c.on_nonfinite = "raise"
  # With on_nonfinite = "skip": the run fails once more than this fraction of its steps was skipped.
  c.max_skipped_fraction = 0.1
  c.num_devices = 0
  c.sample_shards = 0
  return c


def finish(c: config_dict.ConfigDict, smoke: bool) -> config_dict.ConfigDict:
  """Applies the `smoke` variant (a few steps, tiny evaluation, for CI) and locks."""
  if smoke:
    c.ways, c.shots, c.queries, c.eval_queries = 5, 1, 1, 1
    c.num_steps = 2
    c.eval_every = 1
    c.checkpoint_every = 2
    c.log_every = 1
    c.meta_batch_size = 2
    c.num_val_tasks = 2
    c.num_eval_tasks = 4
    c.eval_batch_size = 2  # one evaluation program for validation and test
    c.eval_inner_steps = min(c.eval_inner_steps, 2)
    if "inner_steps" in c.learner:
      c.learner.inner_steps = min(c.learner.inner_steps or 1, 1)
  c.lock()
  return c
