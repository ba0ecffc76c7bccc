"""metalearn: meta-learning in JAX behind one interface."""

from metalearn import algorithms, core, episodes, inner, models
from metalearn.core import MetaLearner, MetaTrainState, make_eval_step, make_meta_step
from metalearn.episodes import Episode, Split

__version__ = "0.1.0"

__all__ = [
  "Episode",
  "MetaLearner",
  "MetaTrainState",
  "Split",
  "algorithms",
  "core",
  "episodes",
  "inner",
  "make_eval_step",
  "make_meta_step",
  "models",
]
