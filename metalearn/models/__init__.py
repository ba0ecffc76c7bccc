"""Neural networks used by the learners, as flax.linen modules."""

from metalearn.models.base import Model, as_model
from metalearn.models.conv4 import Conv4
from metalearn.models.mlp import MLP

__all__ = ["MLP", "Conv4", "Model", "as_model"]
