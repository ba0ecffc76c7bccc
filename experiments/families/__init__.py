"""Task families whose runs are not supervised episodes (neural processes, learned optimizers, RL).

`experiments.train` handles the supervised families (`sinusoid`, `omniglot`)
itself. Any other `config.task` is looked up here: `REGISTRY` maps the task's
name to the module that runs it, imported only when a run asks for it. Such a
module provides

- `validate(config, workdir) -> None`: raises `experiments.train.ConfigError`
  (one line naming the flag) for any bad value, touching nothing on disk;
- `train_and_evaluate(config, workdir) -> dict`: validates, meta-trains through
  `metalearn.training.meta_train`, evaluates, writes `config.json`,
  `eval.json` and its figures into `workdir`, and returns the eval summary.

Its config files live in `experiments/configs/` like the others, so the binary
(`experiments/meta_train.py`) runs every family the same way.
"""

from __future__ import annotations

import importlib
from types import ModuleType

REGISTRY: dict[str, str] = {
  "gp": "experiments.families.gp",  # GP curves: neural processes (CNP, NP, ANP)
  "lopt": "experiments.families.lopt",  # learned optimizers on optimizee families
  "navigation": "experiments.families.navigation",  # 2-D navigation: MAML-RL, E-MAML
  "bandit": "experiments.families.bandit",  # Bernoulli bandits: RL², classical baselines
  "tabular_mdp": "experiments.families.tabular_mdp",  # random tabular MDPs: RL², baselines
}


def family(task: str) -> ModuleType | None:
  """The module that runs `task`, or None for the supervised families of `experiments.train`."""
  name = REGISTRY.get(task)
  return importlib.import_module(name) if name is not None else None


_LOOP_FIELDS = (
  "num_steps",
  "meta_batch_size",
  "seed",
  "eval_every",
  "checkpoint_every",
  "log_every",
  "num_val_tasks",
  "num_eval_tasks",
  "eval_batch_size",
)


def loop_settings(config, **overrides) -> dict:
  """`metalearn.training.meta_train`'s schedule keywords read from `config`, then `overrides`.

  The fields every family config has (`num_steps`, `meta_batch_size`, `seed`,
  `eval_every`, `checkpoint_every`, `log_every`, `num_val_tasks`,
  `num_eval_tasks`, `eval_batch_size`); a family passes what it sets otherwise
  (or what only its config has) as keywords, which replace or add to them.
  """
  settings = {name: config[name] for name in _LOOP_FIELDS if name not in overrides}
  return {**settings, **overrides}
