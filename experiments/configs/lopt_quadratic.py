"""The LSTM optimizer meta-trained on 10-d quadratics (Andrychowicz et al. 2016, Sec. 3.1).

Optimizees `||W theta - y||^2`, W and y i.i.d. N(0, 1), 100 steps unrolled in
truncations of 20, 128 tasks per meta-step, Adam as the meta-optimizer. The
LSTM here keeps the library's preprocessing and output scale 0.1 (the paper's
quadratics use neither). Compared after training on 100 held-out quadratics
with Adam, RMSprop, SGD with momentum and Nesterov momentum, each at its best
rate of a log grid, at steps 100 and 200.

Run (estimator: `tbptt`, the paper's; `es`; `pes`):

  python -m experiments.meta_train --config=experiments/configs/lopt_quadratic.py:tbptt \
      --workdir=runs/lopt_quadratic_tbptt

Measured: docs/learned_optimizers.md (docs/measurements/lopt_quadratic_*).

Smoke variant (a few steps, for CI): `--config=experiments/configs/lopt_quadratic.py:smoke`
(or `:pes,smoke`).
"""

from ml_collections import config_dict

from experiments.configs import _common
from experiments.families import lopt


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the config; `arg` names an estimator (tbptt, es, pes) and/or `smoke`."""
  estimator, smoke = _common.parse_arg(arg, "tbptt", lopt.METHODS)
  c = lopt.common_config("quadratic", estimator)
  c.dim = 10
  c.num_steps = 1000
  c.meta_batch_size = 128
  c.outer_lr = 3e-3
  c.learner.unroll = 100
  c.learner.truncation = 20
  c.learner.num_pairs = 4
  c.lr_grid = (1e-3, 1.0, 4)
  if smoke:
    c.num_steps, c.meta_batch_size = 4, 4
    c.eval_every, c.checkpoint_every, c.log_every = 2, 2, 1
    c.num_val_tasks, c.num_eval_tasks, c.eval_batch_size = 8, 8, 8
    c.learner.unroll, c.learner.truncation, c.learner.hidden = 10, 5, 4
    c.eval_steps = (10, 20)
    c.lr_grid, c.num_tune_tasks = (0.01, 1.0, 1), 4
    c.baselines = ("adam", "nesterov")
  return c
