"""Sinusoid regression (Finn et al. 2017, Sec. 5.1), the full paper setting by default.

MLP 40-40 ReLU, K = 10 support and 10 query points per training task, inner SGD
lr 0.01 with 1 inner step during meta-training, meta-batch 25, Adam 1e-3,
70,000 meta-steps. Evaluation: 1,000 held-out tasks with 100 query points
each, query MSE after 0, 1 and 10 inner steps.

Run (a few minutes on 2 CPU cores):

  python -m experiments.meta_train --config=experiments/configs/sinusoid.py \
      --workdir=runs/sinusoid_maml

Expected (measured, docs/results.md): MAML 10-shot query MSE 0.34 ± 0.03
after 1 step and 0.11 ± 0.01 after 10 steps, against 2.28 and 1.54 for the
pretrained baseline. Other methods: `--config=experiments/configs/sinusoid.py:
fomaml|reptile|metasgd|anil|metacurvature|pretrain|imaml`, whose hyperparameters
are `--config.learner.<name>` (e.g. `:imaml --config.learner.lam=2`); shots:
`--config.shots=5|10|20`. MAML with another inner optimizer: `:maml_adam`
(Adam at inner_lr) or `:maml_lstm` (the LSTM optimizer, meta-learned with the
initialisation); docs/learned_optimizers.md, "Inside MAML". PLATIPUS (`:platipus`)
runs on its paper's ambiguous sinusoid-or-line tasks (`functions = "sine_line"`,
5 shots, 3 x 100 hidden units, 5 inner steps at lr 0.001); MAML with a learned
noise on the same tasks: `:llama --config.learner.laplace=False
--config.functions=sine_line --config.shots=5 --config.hidden=100,100,100
--config.learner.inner_steps=5 --config.learner.inner_lr=0.001`.

Smoke variant (a few steps, for CI): `--config=experiments/configs/sinusoid.py:smoke`
(or `:imaml,smoke`).

Devices: the meta-batch is sharded over every device of the job, so
`meta_batch_size` must be a multiple of the device count; with the paper's 25
on a TPU of 8 cores, pass `--config.meta_batch_size=24` (or 32), or
`--config.num_devices=1`. Launching on a Colab TPU, a TPU-VM pod or a SLURM GPU
cluster: launch/README.md.
"""

from ml_collections import config_dict

from experiments.configs import _common
from metalearn import algorithms

# Config arguments naming MAML with another inner optimizer: (method, optimizer name).
INNER_VARIANTS = {"maml_adam": ("maml", "adam"), "maml_lstm": ("maml", "lstm")}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the config; `arg` names a method and/or `smoke` (a few-step variant)."""
  method, smoke = _common.parse_arg(arg, "maml", (*algorithms.REGISTRY, *INNER_VARIANTS))
  method, inner_optimizer = INNER_VARIANTS.get(method, (method, None))
  c = config_dict.ConfigDict()
  c.task = "sinusoid"
  c.method = method
  c.seed = 0
  c.num_steps = 70_000
  c.eval_every = 10_000
  c.checkpoint_every = 10_000
  c.log_every = 2_000

  c.shots = 10
  c.queries = 10
  c.eval_queries = 100
  c.meta_batch_size = 25
  c.hidden = (40, 40)
  # "sine": the sinusoids above; "sine_line": PLATIPUS's ambiguous tasks, half
  # noisy sinusoids and half noisy lines (metalearn.data.sinusoid.SineOrLine).
  c.functions = "sine"

  c.outer_lr = 1e-3
  c.outer_lr_halve_every = 0  # > 0: halve outer_lr every this many meta-steps
  # The method's hyperparameters, keyword arguments of its factory (None: the
  # factory's default, e.g. 1 inner step for the MAML family as in the paper,
  # 5 for Reptile, 10 for iMAML).
  c.learner = _common.learner_block(method, inner_lr=0.01)
  if inner_optimizer is not None:
    # MAML's inner update by name (metalearn.learned_optim.inner_optimizer):
    # "adam" is Adam at inner_lr; "lstm" the LSTM optimizer of Andrychowicz
    # et al. (2016), meta-learned jointly with the initialisation.
    c.learner.inner_optimizer = inner_optimizer
  c.eval_steps = (0, 1, 10)
  if method == "platipus":
    # The ambiguous regression setting of Finn, Xu & Levine (2018), Sec. 5.1 (5 shots,
    # noisy sinusoids and lines, 3 hidden layers of 100 units, 5 inner steps).
    c.functions, c.shots, c.hidden = "sine_line", 5, (100, 100, 100)
    c.learner.inner_steps = 5
    # At the sinusoid's 0.01, 5 steps on this network diverge on the lines' larger targets
    # (non-finite query loss on 12 of 25 tasks at initialisation); 0.001 stays finite.
    c.learner.inner_lr = 0.001
    c.eval_steps = (0, 1, 5, 10)

  c.num_val_tasks = 100
  c.num_eval_tasks = 1000
  c.strategy = "vmap"
  # Meta-steps per compiled call (one lax.scan over host-sampled batches): a
  # sinusoid step is bound by per-call and per-kernel overhead, not arithmetic.
  # Keep the log / eval / checkpoint intervals multiples of it.
  c.steps_per_call = 20
  # Cores kept for the Python thread (sampling, dispatch) while XLA's CPU pool
  # runs the steps on the others (parallel.reserve_host_cores); 0: XLA takes
  # every core. 1 gave 10-44% more steps a second on 2 cores (docs/results.md).
  c.host_cores = 1
  c.on_nonfinite = "raise"
  # With on_nonfinite = "skip": the run fails once more than this fraction of its steps was skipped.
  c.max_skipped_fraction = 0.1
  # Devices the task axis of the meta-batch is sharded over: 0 = every device
  # of the job (of all its processes); N = the first N (one process only).
  c.num_devices = 0
  # The meta-batch is drawn in this many pieces, each process drawing its own
  # (0 = one per process); set it to a multi-host run's process count to draw
  # that run's exact data on one host.
  c.sample_shards = 0
  # Also train a baseline with the same budget for the figure: the pretrained
  # transfer baseline of Finn et al. (2017), Fig. 2.
  c.baseline = True
  c.baseline_method = "pretrain"

  if smoke:
    c.num_steps = 20
    c.eval_every = 10
    c.checkpoint_every = 10
    c.log_every = 5
    c.steps_per_call = 5
    c.num_val_tasks = 10
    c.num_eval_tasks = 20
  c.lock()
  return c
