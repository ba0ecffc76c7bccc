"""Neural processes on GP curves (the `neuralprocesses` benchmark, 1-D interpolation).

Tasks: x in [-2, 2], 0-30 context and 50 target points, noise variance 0.05,
kernel `eq` (l = 0.25), `matern` (Matern-5/2, l = 0.25) or `weakly_periodic`.
Budget (the benchmark's): batch 16, 2^14 tasks an epoch, 100 epochs (102,400
steps), Adam 3e-4. Evaluation: KL to the exact GP posterior per target point
and coverage of the central 50/90/95% intervals on 4,096 held-out tasks, with
the benchmark's trivial baseline and the diagonal GP as reference rows.

Run:

  python -m experiments.meta_train --config=experiments/configs/np_gp.py:cnp \
      --workdir=runs/np_gp_cnp_eq --config.kernel=eq

Methods: `cnp`, `acnp` (8-head cross-attention), `np` and `anp` (latent path;
`--config.learner.objective=ml|elbo`). Published KL per point on EQ (Bruinsma
2022): CNP 0.54, ACNP 0.45, NP (ML) 0.49, ANP (ML) 0.31, trivial 1.19; what we
measured, and at which budget, is in docs/neural_processes.md.

Smoke variant (a few steps, for CI): `--config=experiments/configs/np_gp.py:cnp,smoke`.
"""

from ml_collections import config_dict

from experiments.configs import _common
from metalearn import algorithms
from metalearn.algorithms import neural_process

METHODS = ("cnp", "acnp", "np", "anp")
_FACTORY = {"cnp": neural_process.cnp, "acnp": neural_process.cnp}
_LATENT = {"np": neural_process.np_latent, "anp": neural_process.np_latent}


def learner_block(method: str) -> config_dict.ConfigDict:
  """Every hyperparameter of `method`'s factory, None meaning the factory's default."""
  factory = {**_FACTORY, **_LATENT}[method]
  return _common.block_of(algorithms.keyword_defaults(factory, ("attentive",)))


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the config; `arg` names a method and/or `smoke` (a few-step variant)."""
  method, smoke = _common.parse_arg(arg, "cnp", METHODS)
  c = config_dict.ConfigDict()
  c.task = "gp"
  c.method = method
  c.kernel = "eq"
  c.seed = 0
  c.min_context = 0
  c.max_context = 30
  c.num_target = 50

  c.meta_batch_size = 16
  c.tasks_per_epoch = 2**14
  c.epochs = 100
  c.num_steps = 0  # > 0: this many steps instead of epochs * tasks_per_epoch / meta_batch_size
  c.outer_lr = 3e-4
  c.learner = learner_block(method)

  c.eval_every = 10_240  # steps (every 10 epochs)
  c.checkpoint_every = 10_240
  c.log_every = 1_024
  c.steps_per_call = 64
  c.num_val_tasks = 256
  c.num_eval_tasks = 4_096  # the benchmark's 2^12
  c.eval_batch_size = 256
  c.strategy = "vmap"
  c.on_nonfinite = "raise"
  c.max_skipped_fraction = 0.1
  c.host_cores = 0
  c.num_figure_tasks = 3

  if smoke:
    c.num_steps = 8
    c.eval_every = 4
    c.checkpoint_every = 4
    c.log_every = 4
    c.steps_per_call = 2
    c.num_val_tasks = 8
    c.num_eval_tasks = 16
    c.eval_batch_size = 8
    c.learner.width = 16
    c.learner.embedding = 16
    if method in _LATENT:
      c.learner.latent = 8
      c.learner.num_samples = 2
      c.learner.num_eval_samples = 4
  c.lock()
  return c
