"""Inner-loop solvers shared by the gradient-based learners."""

from metalearn.inner.gradient import adaptation_curve, gradient_descent, sgd

__all__ = ["adaptation_curve", "gradient_descent", "sgd"]
