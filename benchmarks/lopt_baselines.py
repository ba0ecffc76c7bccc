r"""The tuned baselines alone on a lopt config's held-out tasks (no LSTM).

Tunes Adam, RMSprop, SGD with momentum and Nesterov on the config's log grid
(`num_tune_tasks` tuning tasks, loss at step `unroll`) and runs each at its
rate on the `num_eval_tasks` held-out tasks that `experiments/families/lopt.py`
uses, for `max(eval_steps)` steps; writes the grid, the chosen rates and the
table (`baselines.compare`). For families where the LSTM's own evaluation on
every held-out task is too slow for the machine at hand (MNIST on CPU-2).

  python -m benchmarks.lopt_baselines --config=experiments/configs/lopt_mnist.py \
      --mnist_dir=DIR --out=docs/measurements/lopt_mnist_baselines_cpu2.json
"""

from __future__ import annotations

import json

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments.families import lopt
from metalearn import training
from metalearn.learned_optim import baselines, evaluate_optimizer

_CONFIG = config_flags.DEFINE_config_file("config", help_string="a lopt config file")
_MNIST_DIR = flags.DEFINE_string("mnist_dir", "", "MNIST IDX directory (else the config's)")
_OUT = flags.DEFINE_string("out", None, "JSON file to write")


def main(argv):
  del argv
  config = _CONFIG.value
  if _MNIST_DIR.value:
    config.mnist_dir = _MNIST_DIR.value
  sample, objective, start = lopt.optimizee(config)
  unroll = lopt.learner_kwargs(config).get("unroll", lopt.hyperparameters()["unroll"])
  steps = max(config.eval_steps)
  grid = baselines.log_grid(*config.lr_grid)
  tune_tasks = sample(training.episode_key(config.seed, lopt.TUNE_STREAM, 0), config.num_tune_tasks)
  batches = training.fixed_batches(
    training.on_device(sample),
    config.seed,
    training.TEST_STREAM,
    config.num_eval_tasks,
    config.eval_batch_size,
  )
  held_out = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *batches)
  curves, tuned = {}, {}
  for name in config.baselines:
    best, scores = baselines.tune(name, grid, tune_tasks, unroll, objective=objective, start=start)
    tuned[name] = {"learning_rate": best, "grid_mean_loss": {str(k): v for k, v in scores.items()}}
    opt = baselines.baseline(name, best)
    curves[name] = np.asarray(
      jax.jit(
        lambda t, opt=opt: evaluate_optimizer(opt, t, steps, objective=objective, start=start)
      )(held_out)
    )
    print(f"{name}: lr {best}, loss@{steps} {curves[name][:, -1].mean():.4f}", flush=True)
  table = baselines.compare(curves, config.eval_steps)
  out = {
    "optimizee": config.optimizee,
    "setting": lopt.setting(config),
    "num_tasks": config.num_eval_tasks,
    "grid": list(grid),
    "tuned_at_step": unroll,
    "num_tune_tasks": config.num_tune_tasks,
    "tuned": tuned,
    "table": table,
    "mean_curves": {k: np.nanmean(c, 0).tolist() for k, c in curves.items()},
  }
  if _OUT.value:
    training.write_json_atomic(_OUT.value, out)
  print(json.dumps({k: v["loss@100"] for k, v in table.items()}, indent=1))


if __name__ == "__main__":
  app.run(main)
