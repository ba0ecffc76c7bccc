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


def _task_figure(path, x, truth, support, title, draw) -> None:
  """One regression task's figure: the truth, what `draw(ax)` adds, the support points."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.plot(x, truth, color="black", lw=2.5, label="ground truth")
  draw(ax)
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
  styles = ["--", "-", "-", ":", "-."]

  def draw(ax):
    for i, (label, y) in enumerate(curves.items()):
      ax.plot(x, np.reshape(y, -1), styles[i % len(styles)], lw=1.6, label=label)

  _task_figure(path, x, truth, support, title, draw)


def plot_samples(
  path: str,
  *,
  x: np.ndarray,
  truth: np.ndarray,
  support: tuple[np.ndarray, np.ndarray],
  samples: np.ndarray,
  title: str = "",
) -> None:
  """A sampling learner's functions on one task (PLATIPUS's figure): truth, support, samples.

  Args:
    path: PNG to write.
    x: `[m]` grid.
    truth: `[m]` true function on the grid.
    support: the K support points `(x [K], y [K])`.
    samples: `[S, m]`, each sampled (adapted) function on the grid.
    title: figure title.
  """

  def draw(ax):
    for i, y in enumerate(np.asarray(samples)):
      label = f"{len(samples)} sampled functions" if i == 0 else None
      ax.plot(x, y, color="tab:blue", lw=1.0, alpha=0.6, label=label)

  _task_figure(path, x, truth, support, title, draw)


def plot_reliability(
  path: str,
  *,
  accuracy: np.ndarray,
  confidence: np.ndarray,
  count: np.ndarray,
  ece: float | None = None,
  title: str = "",
) -> None:
  """A classifier's reliability diagram: accuracy against confidence per bin, with counts.

  Bars are each bin's accuracy over M equal-width confidence bins on [0, 1];
  the dots are each bin's mean confidence, the diagonal is perfect
  calibration, and the lower panel gives the number of points per bin.

  Args:
    path: PNG to write.
    accuracy: `[M]` accuracy per bin (NaN for an empty bin).
    confidence: `[M]` mean confidence per bin (NaN for an empty bin).
    count: `[M]` points per bin.
    ece: the expected calibration error, shown in the legend if given.
    title: figure title.

  References: Guo, Pleiss, Sun & Weinberger (2017), figure 1.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  accuracy, confidence, count = (np.asarray(a, np.float64) for a in (accuracy, confidence, count))
  m = accuracy.size
  edges = np.linspace(0.0, 1.0, m + 1)
  centers, width = (edges[:-1] + edges[1:]) / 2, 1.0 / m
  fig, (ax, ax_n) = plt.subplots(
    2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
  )
  full = count > 0
  label = "accuracy" if ece is None else f"accuracy (ECE {100 * ece:.2f}%)"
  ax.bar(centers[full], accuracy[full], width=width, edgecolor="black", alpha=0.7, label=label)
  ax.plot(confidence[full], accuracy[full], "o", color="tab:red", ms=4, label="mean confidence")
  ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
  ax.set_ylabel("accuracy")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8, loc="upper left")
  if title:
    ax.set_title(title)
  ax_n.bar(centers, count, width=width, edgecolor="black", color="tab:gray")
  ax_n.set_yscale("log" if count.max(initial=0) > 0 else "linear")
  ax_n.set_xlabel("confidence (largest softmax probability)")
  ax_n.set_ylabel("points")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_coverage(
  path: str,
  *,
  levels: np.ndarray,
  curves: Mapping[str, np.ndarray],
  title: str = "",
) -> None:
  """A regression reliability diagram: observed against nominal central-interval coverage.

  Args:
    path: PNG to write.
    levels: `[L]` nominal levels p in (0, 1).
    curves: label -> `[L]` observed coverage (e.g. from
      `probabilistic.calibration_curve`, pooled over tasks).
    title: figure title.

  References: Kuleshov, Fenner & Ermon (2018), Accurate uncertainties for deep
  learning using calibrated regression, figure 1.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
  for label, observed in curves.items():
    ax.plot(np.asarray(levels), np.asarray(observed), "o-", ms=3, lw=1.4, label=label)
  ax.set_xlabel("nominal coverage p (central interval)")
  ax.set_ylabel("observed coverage")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_aspect("equal")
  ax.legend(fontsize=8, loc="upper left")
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
