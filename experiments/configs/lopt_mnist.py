"""The LSTM optimizer meta-trained on the MNIST MLP (Andrychowicz et al. 2016, Sec. 3.2).

Optimizees: an MLP with one hidden layer of 20 sigmoid units, cross-entropy on
minibatches of 128 MNIST training images, from N(0, 1 / fan_in) weights; 100
steps unrolled in truncations of 20; the LSTM with the paper's preprocessing
(p = 10) and output scale 0.1. Compared on 100 held-out runs with the tuned
Adam, RMSprop, SGD with momentum and Nesterov at steps 100 and 200.

MNIST: a directory of the four IDX files by `--config.mnist_dir` (or the
environment variable METALEARN_MNIST_DIR); with neither, tensorflow-datasets
downloads it. The paper's generalisation axes: `--config.mnist_hidden=40`,
`--config.mnist_hidden=20,20`, `--config.mnist_activation=relu`.

Run (estimator: `tbptt`, `es` or `pes`):

  python -m experiments.meta_train --config=experiments/configs/lopt_mnist.py:tbptt \
      --workdir=runs/lopt_mnist_tbptt --config.mnist_dir=DIR

Measured: docs/learned_optimizers.md (docs/measurements/lopt_mnist_*).

Smoke variant (a few steps, for CI): `--config=experiments/configs/lopt_mnist.py:smoke`.
"""

from ml_collections import config_dict

from experiments.configs import _common
from experiments.families import lopt


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the config; `arg` names an estimator (tbptt, es, pes) and/or `smoke`."""
  estimator, smoke = _common.parse_arg(arg, "tbptt", lopt.METHODS)
  c = lopt.common_config("mnist", estimator)
  c.mnist_dir = ""  # "": $METALEARN_MNIST_DIR, else tensorflow-datasets
  c.mnist_hidden = (20,)
  c.mnist_activation = "sigmoid"
  c.mnist_batch_size = 128
  c.num_steps = 200
  c.meta_batch_size = 8
  c.outer_lr = 3e-3
  c.eval_every, c.checkpoint_every, c.log_every = 100, 50, 10
  c.learner.unroll = 100
  c.learner.truncation = 20
  c.lr_grid = (1e-3, 3.0, 2)
  c.num_tune_tasks = 16
  c.eval_batch_size = 50
  if smoke:
    c.num_steps, c.meta_batch_size = 2, 2
    c.eval_every, c.checkpoint_every, c.log_every = 1, 1, 1
    c.num_val_tasks, c.num_eval_tasks, c.eval_batch_size = 4, 4, 4
    c.learner.unroll, c.learner.truncation, c.learner.hidden = 4, 2, 3
    c.mnist_hidden, c.mnist_batch_size = (5,), 16
    c.eval_steps = (4, 6)
    c.lr_grid, c.num_tune_tasks = (0.01, 1.0, 0.5), 2
    c.baselines = ("adam",)
  return c
