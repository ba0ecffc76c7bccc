"""Meta-learning algorithms, each a factory returning a `MetaLearner`."""

from metalearn.algorithms.imaml import imaml
from metalearn.algorithms.maml import anil, fomaml, maml, metacurvature, metasgd
from metalearn.algorithms.matching import matching
from metalearn.algorithms.pretrain import pretrain
from metalearn.algorithms.protonet import protonet
from metalearn.algorithms.relation import relation
from metalearn.algorithms.reptile import reptile

# Name -> factory. The gradient-based factories take `(model, *, inner_lr,
# inner_steps, eval_steps, objective)` and more (see their docstrings); the
# metric learners in CLASSIFICATION_ONLY take `(embedding, *, ways)`.
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
}
CLASSIFICATION_ONLY = frozenset({"protonet", "matching", "relation"})


def get(name: str):
  """Returns the factory registered as `name`, or raises naming the known ones."""
  if name not in REGISTRY:
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}")
  return REGISTRY[name]


__all__ = [
  "CLASSIFICATION_ONLY",
  "REGISTRY",
  "anil",
  "fomaml",
  "get",
  "imaml",
  "maml",
  "matching",
  "metacurvature",
  "metasgd",
  "pretrain",
  "protonet",
  "relation",
  "reptile",
]
