"""Neural networks used by the learners, as flax.linen modules."""

from metalearn.models.base import Model, as_model
from metalearn.models.mlp import MLP

__all__ = ["MLP", "Model", "as_model"]
