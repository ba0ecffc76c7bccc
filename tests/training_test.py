"""The training loop: outputs, resume, non-finite handling, broken checkpoints."""

import json
import os

import jax
import numpy as np
import optax
import pytest

from metalearn import algorithms, evaluation, training
from metalearn.data.sinusoid import Sinusoid
from metalearn.models import MLP
from metalearn.training import progress

TASKS = Sinusoid(shots=5, queries=5)


def _evaluator():
  """Query MSE after 0, 1 and 10 inner steps (`mse@k`)."""
  return evaluation.regression(
    evaluation.curve(algorithms.maml, (0, 1, 10), MLP(hidden=(8,)), inner_lr=0.01)
  )


def _train(workdir, num_steps, sampler=TASKS.sample, **kwargs):
  learner = algorithms.maml(MLP(hidden=(8,)), inner_lr=0.01, inner_steps=1)
  args = dict(
    evaluate=_evaluator(),
    optimizer=optax.adam(1e-3),
    num_steps=num_steps,
    meta_batch_size=4,
    workdir=str(workdir),
    seed=3,
    eval_every=10,
    checkpoint_every=10,
    log_every=5,
    num_val_tasks=8,
    num_eval_tasks=12,
    eval_batch_size=5,
    verbose=False,
  )
  args.update(kwargs)
  return training.meta_train(learner, sampler, **args)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_outputs_and_eval_json(tmp_path):
  result = _train(tmp_path, 20)
  with open(tmp_path / "eval.json") as f:
    report = json.load(f)
  assert report["step"] == 20 and report["num_tasks"] == 12 and report["method"] == "maml"
  assert set(report["metrics"]) == {"mse@0", "mse@1", "mse@10"}
  for m in report["metrics"].values():
    assert set(m) == {"mean", "ci95", "n", "nonfinite"}
    assert m["n"] == 12 and m["nonfinite"] == 0 and m["ci95"] > 0
  assert report["metrics"] == result.eval_summary
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == [5, 10, 15, 20]
  assert any("val/mse@1" in r for r in rows) and any("eval/mse@10" in r for r in rows)
  assert os.listdir(tmp_path / "tensorboard")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]


def test_resume_equals_uninterrupted_run(tmp_path):
  full = _train(tmp_path / "full", 30)
  _train(tmp_path / "split", 20)
  resumed = _train(tmp_path / "split", 30)
  assert int(resumed.state.step) == 30
  for a, b in zip(_leaves(full.state), _leaves(resumed.state), strict=True):
    np.testing.assert_array_equal(a, b)
  assert full.eval_summary == resumed.eval_summary
  steps = [
    json.loads(line)["step"]
    for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
  ]
  assert steps == sorted(steps), "resumed logs read as one run"


def _rows(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for row in rows:
    row.pop("steps_per_sec", None)  # wall-clock
  return rows


def test_rerun_of_finished_run_does_not_train(tmp_path):
  first = _train(tmp_path, 10)
  rows = _rows(tmp_path)
  again = _train(tmp_path, 10)
  for a, b in zip(_leaves(first.state), _leaves(again.state), strict=True):
    np.testing.assert_array_equal(a, b)
  assert _rows(tmp_path) == rows, "the final evaluation's line is written once"


def test_steps_per_call_equals_one_step_per_call(tmp_path):
  # log_every=5 with 4 steps per call: calls of 4 steps and single steps up to
  # each log step, so both programs run; the result is that of single steps.
  one = _train(tmp_path / "one", 20)
  many = _train(tmp_path / "many", 20, steps_per_call=4)
  for a, b in zip(_leaves(one.state), _leaves(many.state), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  rows = {}
  for name in ("one", "many"):
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    rows[name] = [json.loads(line) for line in lines if "loss" in json.loads(line)]
  assert [r["step"] for r in rows["many"]] == [5, 10, 15, 20]
  for a, b in zip(rows["one"], rows["many"], strict=True):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
  assert sorted(os.listdir(tmp_path / "many" / "checkpoints")) == ["10", "20"]


def _poisoned(bad_step):
  """A sampler whose batch for training step `bad_step` holds a NaN target."""

  def sample(rng, n):
    batch = TASKS.sample(rng, n)
    if n == 4 and rng.bit_generator.seed_seq.entropy == [3, training.TRAIN_STREAM, bad_step]:
      batch.query.y[0, 0, 0] = np.nan
    return batch

  return sample


def test_nonfinite_stops_with_step_and_keeps_checkpoint(tmp_path):
  # The batch of index 13 is that of the 14th step: 13 steps were completed.
  with pytest.raises(FloatingPointError, match=r"at step 14 .*after 13 completed steps"):
    _train(tmp_path, 30, sampler=_poisoned(13))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]
  assert not (tmp_path / "eval.json").exists()
  # The kept checkpoint loads and continues (with a clean sampler).
  result = _train(tmp_path, 20)
  assert int(result.state.step) == 20


def test_nonfinite_inside_a_call_of_several_steps_names_its_step(tmp_path):
  with pytest.raises(FloatingPointError, match="at step 14 "):
    _train(tmp_path, 30, sampler=_poisoned(13), steps_per_call=4)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]


def test_nonfinite_skip_counts_and_keeps_theta_finite(tmp_path):
  result = _train(tmp_path, 20, sampler=_poisoned(7), on_nonfinite="skip")
  with open(tmp_path / "eval.json") as f:
    assert json.load(f)["nonfinite_steps"] == 1
  assert all(np.all(np.isfinite(x)) for x in _leaves(result.state.theta))


def test_broken_latest_checkpoint_is_skipped(tmp_path, capsys):
  _train(tmp_path, 20)
  latest = tmp_path / "checkpoints" / "20"
  for root, _, files in os.walk(latest):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  result = _train(tmp_path, 20, verbose=True)
  assert "could not be read" in capsys.readouterr().out
  assert any(name.startswith("20.unreadable") for name in os.listdir(tmp_path / "checkpoints"))
  reference = _train(tmp_path / "ref", 20)
  for a, b in zip(_leaves(reference.state), _leaves(result.state), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(num_steps=-1), "num_steps"),
    (dict(meta_batch_size=0), "meta_batch_size"),
    (dict(on_nonfinite="ignore"), "on_nonfinite"),
    (dict(steps_per_call=0), "steps_per_call"),
  ],
)
def test_bad_arguments(tmp_path, kwargs, message):
  num_steps = kwargs.pop("num_steps", 5)
  with pytest.raises(ValueError, match=message):
    _train(tmp_path, num_steps, **kwargs)


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("keep me")
  with pytest.raises(ValueError, match="not a directory"):
    _train(path, 5)
  assert path.read_text() == "keep me"


def test_progress_rate_reads_for_slow_runs_too():
  assert progress.fmt_rate(1361.4) == "1361 steps/s"
  assert progress.fmt_rate(0.25) == "4.0 s/step"  # not "0 steps/s"
  assert progress.fmt_rate(0.0) == "0 steps/s"
