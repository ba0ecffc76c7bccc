"""Meta-learning algorithms, each a factory returning a `MetaLearner`."""

import inspect

from metalearn.algorithms.imaml import imaml
from metalearn.algorithms.llama import llama
from metalearn.algorithms.maml import anil, fomaml, maml, metacurvature, metasgd
from metalearn.algorithms.matching import matching
from metalearn.algorithms.platipus import platipus
from metalearn.algorithms.pretrain import pretrain
from metalearn.algorithms.protonet import protonet
from metalearn.algorithms.relation import relation
from metalearn.algorithms.reptile import reptile
from metalearn.algorithms.tnet import mtnet, tnet
from metalearn.algorithms.warpgrad import warpgrad

# Name -> factory. A factory's first argument is the network it is built on
# (`model`, or a metric learner's `embedding`); its keyword arguments are the
# method's hyperparameters, their defaults in its signature (the one place
# they are defined). `objective` and `ways` come from the task family.
REGISTRY = {
  "maml": maml,
  "fomaml": fomaml,
  "imaml": imaml,
  "reptile": reptile,
  "metasgd": metasgd,
  "anil": anil,
  "metacurvature": metacurvature,
  "pretrain": pretrain,
  "protonet": protonet,
  "matching": matching,
  "relation": relation,
  "tnet": tnet,
  "mtnet": mtnet,
  "warpgrad": warpgrad,
  "llama": llama,
  "platipus": platipus,
}
CLASSIFICATION_ONLY = frozenset({"protonet", "matching", "relation"})
# Their predictors return a `metalearn.probabilistic.Predictive` (a distribution), scored by
# `evaluation.probabilistic_regression` instead of the point-prediction evaluators.
PROBABILISTIC = frozenset({"llama", "platipus"})


TASK_ARGUMENTS = ("objective", "ways")  # given by the task family, not the method's config
_SETTABLE = (bool, int, float, str)


def keyword_defaults(
  factory, exclude: tuple[str, ...] = (), *, settable_only: bool = False
) -> dict[str, object]:
  """`{name: default}` of `factory`'s keyword-only arguments, less `exclude`.

  With `settable_only`, only plain defaults (bool, int, float, str) are kept:
  what a config block can hold. Every family's learner block is built from it.
  """
  return {
    p.name: p.default
    for p in inspect.signature(factory).parameters.values()
    if p.kind is p.KEYWORD_ONLY
    and p.name not in exclude
    and (not settable_only or isinstance(p.default, _SETTABLE))
  }


def hyperparameters(name: str) -> dict[str, object]:
  """The method's configurable keyword arguments and their defaults, from its factory's signature.

  Arguments given by the task family (`TASK_ARGUMENTS`) and those whose
  defaults are not plain values (objects such as `inner_optimizer`) are left
  out; what remains is what a config's `learner` block may set.
  """
  return keyword_defaults(get(name), TASK_ARGUMENTS, settable_only=True)


def get(name: str):
  """Returns the factory registered as `name`, or raises naming the known ones."""
  if name not in REGISTRY:
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}")
  return REGISTRY[name]


__all__ = [
  "CLASSIFICATION_ONLY",
  "PROBABILISTIC",
  "REGISTRY",
  "anil",
  "fomaml",
  "get",
  "hyperparameters",
  "imaml",
  "keyword_defaults",
  "llama",
  "maml",
  "matching",
  "metacurvature",
  "metasgd",
  "mtnet",
  "platipus",
  "pretrain",
  "protonet",
  "relation",
  "reptile",
  "tnet",
  "warpgrad",
]
