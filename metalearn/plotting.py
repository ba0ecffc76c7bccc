"""Figures people would rather look at than read."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from metalearn import core
from metalearn import episodes as ep
from metalearn.types import MetaParams, PRNGKey


def adaptation_predictions(
  learners: Mapping[int, core.MetaLearner],
  theta: MetaParams,
  support: ep.Split,
  x: np.ndarray,
  key: PRNGKey,
) -> dict[int, np.ndarray]:
  """Predictions on `x [m, ...]` of each learner's predictor adapted on `support`.

  Args:
    learners: inner step count -> learner (e.g. `evaluation.curve(...)`).
    theta: meta-parameters.
    support: one task's support split.
    x: inputs `[m, ...]`.
    key: PRNG key of `adapt`.

  Returns:
    step count -> `[m, d]` predictions (the mean, for a predictor that returns a
    `metalearn.probabilistic.Predictive`).
  """
  out = {}
  for k, learner in learners.items():
    y = jax.device_get(learner.adapt(theta, support, key)(x))
    if hasattr(y, "mean") and hasattr(y, "scale"):  # a predictive distribution: its mean
      y = np.mean(np.asarray(y.mean), axis=0)[:, None]
    out[int(k)] = np.asarray(y)
  return out


def plot_sinusoid(
  path: str,
  *,
  x: np.ndarray,
  truth: np.ndarray,
  support: tuple[np.ndarray, np.ndarray],
  curves: dict[str, np.ndarray],
  title: str = "",
) -> None:
  """The MAML paper's sinusoid figure: truth, support points and each model's curve.

  Args:
    path: PNG to write.
    x: `[m]` grid.
    truth: `[m]` true function on the grid.
    support: the K support points `(x [K], y [K])`.
    curves: label -> `[m]` predictions (e.g. "MAML, 1 step").
    title: figure title.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.plot(x, truth, color="black", lw=2.5, label="ground truth")
  styles = ["--", "-", "-", ":", "-."]
  for i, (label, y) in enumerate(curves.items()):
    ax.plot(x, np.reshape(y, -1), styles[i % len(styles)], lw=1.6, label=label)
  ax.scatter(
    np.reshape(support[0], -1),
    np.reshape(support[1], -1),
    marker="^",
    s=70,
    color="tab:red",
    zorder=5,
    label=f"{np.size(support[0])} support points",
  )
  ax.set_xlabel("x")
  ax.set_ylabel("y")
  if title:
    ax.set_title(title)
  ax.legend(fontsize=8, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
