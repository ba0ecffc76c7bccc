"""Evaluators: one per task family, scoring any learner's adapted `task_params`.

An evaluator is a one-task function `(theta, task, key) -> {name: scalar}`;
`core.make_eval_step` batches it over tasks and `core.evaluate` turns the
per-task values into means with confidence intervals. Evaluation belongs to
the task family, not to the learner: a supervised task is scored by calling
the predictor `adapt` returns on the query inputs, whatever the method (adapted
weights, prototypes, attention over the support set), so a new method needs
no evaluation code and a new family adds one evaluator here.

Adaptation curves: given learners built with several inner step counts
(`curve`), the metrics are reported as `name@k`, the query metric after k inner
steps; a single learner's metrics keep their plain names.

Calibration of classifiers (`classification(..., calibration_bins=M)`): the
expected calibration error is a ratio of sums over all query points of all
tasks, not a mean of per-task values, so each task reports per-bin sums
(`conf_sum_bNN`, `correct_sum_bNN`, `count_bNN`, scalars that the
aggregator averages over tasks) and `with_ece` / `reliability` turn the
averaged sums into the pooled ECE and the reliability diagram: a ratio of
means over tasks is the ratio of the pooled sums.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metalearn import episodes as ep
from metalearn.core import EvaluateFn, MetaLearner

CALIBRATION_BINS = 15
_SUMS = ("conf_sum", "correct_sum", "count")


def curve(
  factory: Callable[..., MetaLearner], steps: Sequence[int], *args: Any, **kwargs: Any
) -> dict[int, MetaLearner] | MetaLearner:
  """The learners `factory(*args, **kwargs, inner_steps=k)` for each k in `steps`.

  A factory without an `inner_steps` argument (a metric learner) has no
  adaptation curve: its one learner is returned instead.

  Args:
    factory: a learner factory (e.g. `algorithms.maml`).
    steps: the inner step counts, e.g. `(0, 1, 10)`; non-empty, each >= 0.
    *args: the factory's positional arguments (the model).
    **kwargs: the factory's other keyword arguments.

  Raises:
    ValueError: for an empty `steps` or a negative count.
  """
  if "inner_steps" not in inspect.signature(factory).parameters:
    return factory(*args, **kwargs)
  steps = tuple(int(k) for k in steps)
  if not steps or min(steps) < 0:
    raise ValueError(f"eval_steps must be a non-empty list of step counts >= 0, got {steps}")
  return {k: factory(*args, **{**kwargs, "inner_steps": k}) for k in sorted(set(steps))}


def supervised(
  learners: MetaLearner | Mapping[int, MetaLearner], objective: str | ep.Objective
) -> EvaluateFn:
  """Query metrics of the predictor each learner adapts on the support split.

  Args:
    learners: one learner (metrics named as the objective names them, e.g.
      `accuracy`) or inner step count -> learner (from `curve`; metrics named
      `name@k`).
    objective: the task family's metrics (`"mse"` for regression: `mse`;
      `"cross_entropy"` for classification, whose predictors give logits:
      `loss` and `accuracy`).

  Returns:
    `(theta, episode, key) -> {name: scalar}` for ONE `Episode`.
  """
  objective = ep.get_objective(objective)
  named = {None: learners} if isinstance(learners, MetaLearner) else dict(learners)

  def evaluate(theta, episode, key):
    ep.check_episode(episode, batched=False)
    out = {}
    for k, learner in named.items():
      predictions = learner.adapt(theta, episode.support, key)(episode.query.x)
      for name, fn in objective.metrics.items():
        out[name if k is None else f"{name}@{k}"] = fn(predictions, episode.query)
    return out

  return evaluate


def regression(learners: MetaLearner | Mapping[int, MetaLearner]) -> EvaluateFn:
  """Regression tasks (sinusoid): query mean squared error `mse` (or `mse@k`)."""
  return supervised(learners, "mse")


def classification(
  learners: MetaLearner | Mapping[int, MetaLearner], *, calibration_bins: int = 0
) -> EvaluateFn:
  """N-way classification (Omniglot): cross-entropy `loss` and `accuracy` of the logits.

  Args:
    learners: as in `supervised`.
    calibration_bins: M > 0 adds, per task, the per-bin sums of
      `calibration_sums` as scalar metrics `conf_sum_bNN`, `correct_sum_bNN`,
      `count_bNN` (`@k` with a curve; NN = 00 .. M-1); `with_ece` turns their
      averages over tasks into `ece` (`ece@k`). 0 (the default): only `loss`
      and `accuracy`.
  """
  return supervised(learners, calibration_objective(calibration_bins))


def calibration_objective(num_bins: int = 0) -> ep.Objective:
  """The cross-entropy objective with the per-bin calibration sums as extra metrics.

  Args:
    num_bins: M >= 0 equal-width confidence bins; 0 returns the plain objective.

  Raises:
    ValueError: for a negative `num_bins`.
  """
  base = ep.get_objective("cross_entropy")
  if num_bins < 0:
    raise ValueError(f"calibration_bins must be >= 0, got {num_bins}")
  if num_bins == 0:
    return base
  metrics = dict(base.metrics)
  for i, name in enumerate(_SUMS):
    for b in range(num_bins):
      metrics[f"{name}_b{b:02d}"] = lambda z, s, i=i, b=b: calibration_sums(z, s, num_bins)[i][b]
  return ep.Objective(base.loss, metrics)


def calibration_sums(
  logits: jax.Array, split: ep.Split, num_bins: int = CALIBRATION_BINS
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-bin sums of one task's real query points (mask True), binned by confidence.

  The confidence of a point is its largest softmax probability; bin m
  (0-based) holds confidences in `(m / M, (m + 1) / M]` (bin 0 also holds 0).

  Args:
    logits: `[n, classes]`.
    split: the query split, `y [n]` int labels, `mask [n]`.
    num_bins: M > 0.

  Returns:
    `(confidence_sum [M], correct_sum [M], count [M])`, float32.

  References: Guo, Pleiss, Sun & Weinberger (2017), On calibration of modern
  neural networks (equal-width bins, ECE).
  """
  prob = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  conf = jnp.max(prob, axis=-1)
  correct = (jnp.argmax(logits, axis=-1) == split.y).astype(jnp.float32)
  bins = jnp.clip(jnp.ceil(conf * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  # Padded rows are selected away, so a NaN there cannot leak into the sums.
  onehot = jnp.where(split.mask[:, None], jax.nn.one_hot(bins, num_bins), 0.0)  # [n, M]
  conf, correct = (jnp.where(split.mask, a, 0.0) for a in (conf, correct))
  return conf @ onehot, correct @ onehot, jnp.sum(onehot, axis=0)


def expected_calibration_error(
  confidence_sums: Any, correct_sums: Any, counts: Any
) -> dict[str, Any]:
  """ECE and reliability bins from per-bin sums, pooled over any leading axes.

  `ECE = sum_m |acc_m - conf_m| n_m / N`, with `acc_m` and `conf_m` the mean
  correctness and confidence of the points in bin m, `n_m` their number and
  N the total. Per-task sums `[T, M]` (or their means over tasks) give the
  pooled value over every point of every task.

  Args:
    confidence_sums, correct_sums, counts: `[..., M]` arrays of per-bin sums.

  Returns:
    `{"ece": float, "confidence": [M], "accuracy": [M], "fraction": [M]}`
    (numpy; NaN for an empty bin's confidence and accuracy; `fraction` is
    n_m / N).

  References: Guo et al. (2017), eq. (3).
  """
  conf, correct, count = (
    np.asarray(a, np.float64) for a in (confidence_sums, correct_sums, counts)
  )
  axes = tuple(range(count.ndim - 1))
  conf, correct, count = conf.sum(axes), correct.sum(axes), count.sum(axes)
  total = count.sum()
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_conf, accuracy = conf / count, correct / count
  fraction = count / total if total > 0 else np.zeros_like(count)
  gap = np.where(count > 0, np.abs(accuracy - mean_conf), 0.0)
  return {
    "ece": float(np.sum(gap * fraction)),
    "confidence": mean_conf,
    "accuracy": accuracy,
    "fraction": fraction,
  }


def reliability(summary: Mapping[str, Mapping[str, float]], k: int | None = None) -> dict:
  """The pooled ECE and reliability bins of a `core.evaluate` summary with calibration sums.

  Args:
    summary: name -> `{"mean", "n", ...}` from an evaluator built with
      `classification(..., calibration_bins=M)`.
    k: the inner step count (metrics `name@k`); None for plain names.

  Returns:
    `expected_calibration_error`'s dict plus `"count" [M]`, the number of
    points per bin (mean per task times the number of tasks), `"tasks"` and
    `"nonfinite"`, the most tasks any sum left out as non-finite (0, or the
    pooling is not exact).

  Raises:
    KeyError: the summary holds no calibration sums for `k`.
  """
  suffix = "" if k is None else f"@{k}"
  num_bins = 0
  while f"count_b{num_bins:02d}{suffix}" in summary:
    num_bins += 1
  if not num_bins:
    raise KeyError(f"no calibration sums count_bNN{suffix} in the summary")
  mean = lambda name: np.array(
    [summary[f"{name}_b{b:02d}{suffix}"]["mean"] for b in range(num_bins)]
  )
  out = expected_calibration_error(*(mean(name) for name in _SUMS))
  tasks = int(summary[f"count_b00{suffix}"]["n"])
  nonfinite = max(
    int(summary[f"{name}_b{b:02d}{suffix}"].get("nonfinite", 0))
    for name in _SUMS
    for b in range(num_bins)
  )
  return {**out, "count": mean("count") * tasks, "tasks": tasks, "nonfinite": nonfinite}


def with_ece(summary: Mapping[str, Mapping[str, float]]) -> dict:
  """`summary` with `ece` (or `ece@k` for each k) added where it holds calibration sums.

  Each entry is `{"mean": the pooled ECE, "ci95": NaN, "n": tasks,
  "nonfinite"}` (`reliability`'s count of left-out tasks): ECE pools the
  points of all tasks, so it has no per-task values to take an interval over.
  """
  out = dict(summary)
  for name in summary:
    if name.startswith("count_b00"):
      suffix = name[len("count_b00") :]
      k = int(suffix[1:]) if suffix else None
      bins = reliability(summary, k)
      out[f"ece{suffix}"] = {
        "mean": bins["ece"],
        "ci95": float("nan"),
        "n": bins["tasks"],
        "nonfinite": bins["nonfinite"],
      }
  return out


def probabilistic_regression(learners: MetaLearner | Mapping[int, MetaLearner]) -> EvaluateFn:
  """Regression tasks scored as distributions: for predictors returning a `Predictive`.

  Per query point: `loglik` (the joint log-likelihood of the real query
  targets divided by their number), `coverage_50`, `coverage_90`,
  `coverage_95` (fractions of targets inside the central intervals,
  `metalearn.probabilistic.scores`' `coverage@p`) and `mse` of the predictive
  mean; `name@k` with an adaptation curve. LLAMA and MAML with a learned noise (`algorithms.llama`)
  are scored by it on the sinusoid.
  """
  from metalearn import probabilistic  # distrax: imported only by probabilistic families

  named = {None: learners} if isinstance(learners, MetaLearner) else dict(learners)

  def evaluate(theta, episode, key):
    ep.check_episode(episode, batched=False)
    out = {}
    for k, learner in named.items():
      pred = learner.adapt(theta, episode.support, key)(episode.query.x)
      mean = probabilistic.moments(pred)[0][:, None]
      scores = probabilistic.scores(pred, episode.query)  # coverage@p -> coverage_p, for @k
      metrics = {n.replace("@", "_"): v for n, v in scores.items()}
      metrics["mse"] = ep.mse(mean, episode.query)
      out.update({name if k is None else f"{name}@{k}": v for name, v in metrics.items()})
    return out

  return evaluate
