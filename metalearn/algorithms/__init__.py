"""Meta-learning algorithms, each a factory returning a `MetaLearner`."""

from metalearn.algorithms.maml import anil, fomaml, maml, metacurvature, metasgd
from metalearn.algorithms.pretrain import pretrain
from metalearn.algorithms.reptile import reptile

# Name -> factory. Every factory takes `(model, *, inner_lr, inner_steps,
# eval_steps, objective)`; some take more (see their docstrings).
REGISTRY = {
  "maml": maml,
  "fomaml": fomaml,
  "reptile": reptile,
  "metasgd": metasgd,
  "anil": anil,
  "metacurvature": metacurvature,
  "pretrain": pretrain,
}


def get(name: str):
  """Returns the factory registered as `name`, or raises naming the known ones."""
  if name not in REGISTRY:
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}")
  return REGISTRY[name]


__all__ = [
  "REGISTRY",
  "anil",
  "fomaml",
  "get",
  "maml",
  "metacurvature",
  "metasgd",
  "pretrain",
  "reptile",
]
