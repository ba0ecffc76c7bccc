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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from metalearn import episodes as ep
from metalearn.core import EvaluateFn, MetaLearner


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


def classification(learners: MetaLearner | Mapping[int, MetaLearner]) -> EvaluateFn:
  """N-way classification (Omniglot): cross-entropy `loss` and `accuracy` of the logits."""
  return supervised(learners, "cross_entropy")


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
