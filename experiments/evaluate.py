r"""Evaluates a trained Omniglot run on held-out episodes of another N-way K-shot setting.

  python -m experiments.evaluate --workdir=runs/protonet_omniglot --ways=20 --shots=5 \
      [--queries=5] [--num_tasks=1000] [--scoring=batch|with_support|alone] [--out=FILE.json] \
      [--calibration_bins=15 [--reliability_figure=FILE.png]]

Prototypical Networks are trained on one episode shape and reported on several
(Snell et al. train 1-shot models on 60-way episodes and test 5- and 20-way);
this binary is that second half. It loads the run's settings (`config.json`)
and its newest checkpoint, draws `--num_tasks` test episodes of the requested
shape from the run's test split (the same seed and stream as the run's final
evaluation, so asking for the run's own setting with `--batch_size=<the run's
eval_batch_size>` reproduces its `eval.json`),
and writes `accuracy` (mean and 95% CI over episodes) in eval.json's format to
`--out` (default `<workdir>/eval_<ways>way_<shots>shot.json`).

Metric learners (ProtoNets, Matching, Relation) take any number of ways and
shots. Episodes are evaluated `--batch_size` at a time (default 100, fewer for
large episodes: `default_batch_size`). Each batch is drawn from its own seed,
so the batch size also picks the episodes: pass the same `--batch_size` (the
run's `eval_batch_size` for its own setting) to reproduce a number.

`--scoring` says how the query images of an episode are scored: `batch` (the
default; all queries of the episode as one batch, as training and the papers'
evaluations do, transductive where the model normalises with batch
statistics, as Conv4 does), `with_support` (each query on its own, in a batch
with the support images: `experiments.predict.score_each`, what `predict` does
by default) or `alone` (each query as a batch of one image). The result names
its scoring and is written to `eval_<ways>way_<shots>shot_<scoring>.json`
unless the scoring is `batch`.

`--calibration_bins=M` (M > 0) also reports the expected calibration error
`ece` over M equal-width confidence bins, pooled over every query point of
every episode (`evaluation.with_ece`; its `ci95` is NaN, as a pooled value has
no per-episode values), the per-bin sums it is computed from, and the
reliability bins under `calibration`; `--reliability_figure` draws them
(`plotting.plot_reliability`). The default, 0, leaves the report as it was.

Gradient-based methods have a head with the run's `ways` outputs: they can
change shots and queries, not ways, and report accuracy after the run's
`eval_inner_steps` inner steps.
"""

from __future__ import annotations

import os
import time

import jax
from absl import app, flags, logging

from experiments import predict, train
from metalearn import core, evaluation, training
from metalearn.data.sampler import EpisodicSampler

MAX_BATCH = 100
PAIRS_PER_BATCH = 200_000


def default_batch_size(ways: int, queries: int) -> int:
  """Episodes per compiled evaluation call for an episode shape.

  `MAX_BATCH`, or fewer where a batch would hold more than `PAIRS_PER_BATCH`
  (class, query image) pairs, `episodes * ways * ways * queries`: Relation
  Networks run their relation module on every such pair, and 100 episodes of
  20-way 1-shot with 19 queries need more than 20 GB. 100 episodes for every
  5-way shape and for 20-way with 5 queries; 26 for 20-way with 19, which
  still peaked at about 13 GB resident for Relation Networks on CPU: pass a
  smaller `--batch_size` on a smaller machine.

  Args:
    ways, queries: the episode shape, each >= 1.

  Returns:
    An int in [1, MAX_BATCH].
  """
  return max(1, min(MAX_BATCH, PAIRS_PER_BATCH // (ways * ways * queries)))


def evaluate(
  workdir: str,
  *,
  ways: int | None = None,
  shots: int | None = None,
  queries: int | None = None,
  num_tasks: int = 1000,
  batch_size: int | None = None,
  scoring: str = "batch",
  calibration_bins: int = 0,
  verbose: bool = True,
) -> dict:
  """Accuracy of the run in `workdir` on test episodes of the given shape.

  Args:
    workdir: an Omniglot run written by `experiments.meta_train`.
    ways, shots, queries: episode shape (default: the run's `ways`, `shots`,
      `eval_queries`).
    num_tasks: test episodes, > 0.
    batch_size: episodes per compiled evaluation call, > 0 (default:
      `default_batch_size` of the shape). Each batch has its own seed, so this
      also selects the episodes drawn.
    scoring: `batch`, `with_support` or `alone` (see the module docstring).
    calibration_bins: M > 0 adds `ece` (and `ece@k`) to the metrics and the
      reliability bins as `calibration` (see the module docstring); 0: neither.
    verbose: print progress and the result.

  Returns:
    `{"method", "trained": {"ways", "shots"}, "ways", "shots", "queries",
    "num_tasks", "batch_size", "scoring", "metrics": {name: {"mean", "ci95", "n",
    "nonfinite"}}}`, with `accuracy` among the metrics.

  Raises:
    FileNotFoundError: the run, its config or its checkpoints are missing.
    ValueError: one line naming the flag for a shape the run cannot take.
  """
  config = train.load_config(workdir)
  train_ways, train_shots = config.ways, config.shots
  ways = train_ways if ways is None else ways
  shots = config.shots if shots is None else shots
  queries = config.eval_queries if queries is None else queries

  def check(name, value, low):
    if not isinstance(value, int) or value < low:
      raise ValueError(f"--{name}={value!r}: must be an integer >= {low}")

  for name, value, low in (("ways", ways, 2), ("shots", shots, 1), ("queries", queries, 1)):
    check(name, value, low)
  check("num_tasks", num_tasks, 1)
  if not isinstance(calibration_bins, int) or calibration_bins < 0:
    raise ValueError(f"--calibration_bins={calibration_bins!r}: must be an integer >= 0")
  if scoring not in predict.SCORINGS:
    raise ValueError(f"--scoring={scoring!r}: choose one of {', '.join(predict.SCORINGS)}")
  batch_size = default_batch_size(ways, queries) if batch_size is None else batch_size
  check("batch_size", batch_size, 1)
  if not train.changes_ways(config) and ways != train_ways:
    raise ValueError(
      f"--ways={ways}: the {config.method} run in {workdir} was trained {train_ways}-way and "
      f"its classifier head has {train_ways} outputs; only metric learners (whose factory "
      "takes ways) change ways"
    )

  _, _, theta = train.load_run(workdir)
  config.ways, config.shots, config.eval_queries = ways, shots, queries
  test_sampler = _test_sampler(config)
  batches = training.fixed_batches(
    test_sampler, config.seed, training.TEST_STREAM, num_tasks, min(batch_size, num_tasks)
  )
  evaluator = _evaluator(config, scoring, calibration_bins)
  eval_step = jax.jit(core.make_eval_step(evaluator, strategy=config.strategy))
  start = time.time()
  summary = core.evaluate(eval_step, theta, batches, jax.random.PRNGKey(config.seed + 1))
  summary = train.with_plain_accuracy(config, summary)
  calibration = None
  if calibration_bins:
    summary = evaluation.with_ece(summary)
    k = None if "ece" in summary else config.eval_inner_steps
    if k is not None:  # gradient-based: `ece` is `ece@{eval_inner_steps}`, as for accuracy
      summary["ece"] = summary[f"ece@{k}"]
    bins = evaluation.reliability(summary, k)
    names = ("accuracy", "confidence", "fraction", "count")
    calibration = {"bins": calibration_bins, "inner_steps": k, "ece": bins["ece"]}
    calibration.update({name: [float(v) for v in bins[name]] for name in names})
  report = {
    "method": config.method,
    "trained": {"ways": train_ways, "shots": train_shots},
    "ways": ways,
    "shots": shots,
    "queries": queries,
    "num_tasks": num_tasks,
    "batch_size": batch_size,
    "scoring": scoring,
    "metrics": summary,
  }
  if calibration is not None:
    report["calibration"] = calibration
  if verbose:
    acc = summary["accuracy"]
    print(
      f"[{config.method}] {ways}-way {shots}-shot, {num_tasks} test episodes, {scoring} "
      f"({time.time() - start:.0f} s): accuracy {100 * acc['mean']:.2f} +- "
      f"{100 * acc['ci95']:.2f}%",
      flush=True,
    )
  return report


def _evaluator(config, scoring: str, calibration_bins: int = 0) -> core.EvaluateFn:
  """`train.evaluator(config)` with its learners' queries scored as `scoring` says.

  With `calibration_bins` > 0 the classification objective also reports the
  per-bin sums behind `evaluation.with_ece`.
  """
  learners = train.curve_learners(config)
  wrap = lambda learner: learner._replace(adapt=predict.scored_adapt(learner.adapt, scoring))
  if isinstance(learners, core.MetaLearner):
    learners = wrap(learners)
  else:
    learners = {k: wrap(learner) for k, learner in learners.items()}
  objective = train.OBJECTIVES[config.task]
  if calibration_bins and objective == "cross_entropy":
    objective = evaluation.calibration_objective(calibration_bins)
  return evaluation.supervised(learners, objective)


def _test_sampler(config) -> EpisodicSampler:
  """The sampler of the run's test split for `config`'s (already overridden) shape.

  Only the test split is checked: a 5-shot evaluation of a run trained with 19
  queries per class is fine although its training episodes would not be.
  """
  splits = train.load_omniglot(
    config.data_dir or None, zip_dir=config.zip_dir or None, split_protocol=config.split_protocol
  )
  flags = f"--ways={config.ways} --shots={config.shots} --queries={config.eval_queries}"
  return train.split_sampler(splits, "test", config.ways, config.shots, config.eval_queries, flags)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.ERROR)  # orbax warns about the read-only restore
  f = flags.FLAGS
  try:
    report = evaluate(
      f.workdir,
      ways=f.ways,
      shots=f.shots,
      queries=f.queries,
      num_tasks=f.num_tasks,
      batch_size=f.batch_size,
      scoring=f.scoring,
      calibration_bins=f.calibration_bins,
    )
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  suffix = "" if f.scoring == "batch" else f"_{f.scoring}"
  name = f"eval_{report['ways']}way_{report['shots']}shot{suffix}.json"
  out = f.out or os.path.join(f.workdir, name)
  training.write_json_atomic(out, report)
  print(f"wrote {out}", flush=True)
  if f.reliability_figure:
    if "calibration" not in report:
      raise SystemExit("error: --reliability_figure needs --calibration_bins > 0")
    from metalearn import plotting

    c = report["calibration"]
    plotting.plot_reliability(
      f.reliability_figure,
      accuracy=c["accuracy"],
      confidence=c["confidence"],
      count=c["count"],
      ece=c["ece"],
      title=f"{report['method']}, {report['ways']}-way {report['shots']}-shot",
    )
    print(f"wrote {f.reliability_figure}", flush=True)


def define_flags() -> None:
  """The binary's flags (defined only when run as the binary, as in `predict`)."""
  flags.DEFINE_string("workdir", None, "a trained Omniglot run (config.json, checkpoints/)")
  flags.DEFINE_integer("ways", None, "classes per test episode (default: the run's)")
  flags.DEFINE_integer("shots", None, "support images per class (default: the run's)")
  flags.DEFINE_integer("queries", None, "query images per class (default: the run's)")
  flags.DEFINE_integer("num_tasks", 1000, "test episodes")
  flags.DEFINE_integer(
    "batch_size", None, "episodes per compiled evaluation call (default: by episode size)"
  )
  flags.DEFINE_enum(
    "scoring",
    "batch",
    ["batch", "with_support", "alone"],
    "queries as one batch (transductive), each beside the support set, or each alone",
  )
  flags.DEFINE_string(
    "out", None, "JSON file (default: <workdir>/eval_<W>way_<S>shot[_<scoring>].json)"
  )
  flags.DEFINE_integer(
    "calibration_bins", 0, "report ECE over this many confidence bins (0: no calibration)"
  )
  flags.DEFINE_string(
    "reliability_figure", None, "PNG of the reliability diagram (needs --calibration_bins)"
  )
  flags.mark_flag_as_required("workdir")


if __name__ == "__main__":
  define_flags()
  app.run(main)
