"""Inner-loop solvers shared by the gradient-based learners."""

from metalearn.inner.gradient import gradient_descent, sgd
from metalearn.inner.learned import (
  LearnedUpdate,
  as_learned_update,
  curvature_transform,
  fixed,
  learned_curvature,
  learned_rates,
  precondition_by_curvature,
  scale_by_learned_rates,
)

__all__ = [
  "LearnedUpdate",
  "as_learned_update",
  "curvature_transform",
  "fixed",
  "gradient_descent",
  "learned_curvature",
  "learned_rates",
  "precondition_by_curvature",
  "scale_by_learned_rates",
  "sgd",
]
