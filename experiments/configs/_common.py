"""Helpers of the config files (not a config itself): the method argument and the learner block."""

from collections.abc import Iterable

from ml_collections import config_dict

from metalearn import algorithms


def parse_arg(
  arg: str | None, default_method: str, methods: Iterable[str] | None = None
) -> tuple[str, bool]:
  """`"imaml,smoke"` -> `("imaml", True)`: the config file's argument, a method and/or `smoke`.

  `--config=experiments/configs/sinusoid.py:imaml` builds the config of that
  method (its learner block holds that method's hyperparameters);
  `...:smoke` the few-step variant CI runs; `...:imaml,smoke` both.

  `methods` are the names a part may give (default: `metalearn.algorithms.REGISTRY`;
  a family of `experiments/families` passes its own).

  Raises:
    ValueError: for a part that is neither `smoke` nor one of `methods`.
  """
  methods = tuple(algorithms.REGISTRY if methods is None else methods)
  method, smoke = default_method, False
  for part in filter(None, (arg or "").split(",")):
    if part == "smoke":
      smoke = True
    elif part in methods:
      method = part
    else:
      raise ValueError(
        f"unknown config argument {part!r}; give 'smoke' and/or a method: {', '.join(methods)}"
      )
  return method, smoke


def block_of(defaults: dict, **settings) -> config_dict.ConfigDict:
  """A `config.learner` block: each of `defaults`' names, set from `settings` where given,
  else a placeholder typed as its default (None: the factory's default)."""
  block = config_dict.ConfigDict()
  for name, default in defaults.items():
    block[name] = settings.get(name, config_dict.placeholder(type(default)))
  return block


def learner_block(method: str, **settings) -> config_dict.ConfigDict:
  """`config.learner`: every hyperparameter of `method`, None meaning the factory's default.

  Each field is typed as its default, so `--config.learner.lam=0.01` parses;
  `settings` are this task's values (the paper's), set where the method has
  the hyperparameter and ignored where it has not.
  """
  return block_of(algorithms.hyperparameters(method), **settings)
