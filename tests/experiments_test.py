"""The absl binary and train_and_evaluate: smoke runs, bad input, workdir safety."""

import json
import os
import subprocess
import sys

import pytest

from experiments import train
from experiments.configs import sinusoid
from metalearn import algorithms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "sinusoid.py")


def _binary(*args):
  return subprocess.run(
    [sys.executable, "-m", "experiments.meta_train", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": ROOT},
  )


def test_smoke_config_through_binary(tmp_path):
  workdir = tmp_path / "run"
  out = _binary(f"--config={CONFIG}:smoke", f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads((workdir / "eval.json").read_text())
  assert set(report["metrics"]) == {"mse@0", "mse@1", "mse@10"}
  assert report["step"] == 20
  assert (workdir / "sinusoid.png").stat().st_size > 10_000
  assert (workdir / "baseline" / "eval.json").exists()
  assert "[maml] step 20/20" in out.stdout
  if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2:
    assert "XLA's CPU pool on cores" in out.stdout  # the config's host_cores = 1 applied


def test_host_cores_after_jax_started_is_a_note_not_an_error(capsys):
  import jax

  from experiments import meta_train

  jax.devices()
  meta_train.apply_host_cores(1)  # too late to apply: says so, training would go on
  assert "--config.host_cores=1 not applied" in capsys.readouterr().out
  meta_train.apply_host_cores(0)  # off: nothing to say
  assert capsys.readouterr().out == ""


def test_host_cores_on_an_accelerator_gives_the_python_thread_every_core(monkeypatch, capsys):
  import jax

  from experiments import meta_train

  pinned = []
  monkeypatch.setattr(
    meta_train.parallel, "reserve_host_cores", lambda n: (frozenset({0, 1, 2}), frozenset({3}))
  )
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(
    os, "sched_setaffinity", lambda pid, cores: pinned.append((pid, cores)), raising=False
  )
  meta_train.apply_host_cores(1)
  assert pinned == [(0, frozenset({0, 1, 2, 3}))]
  assert "on gpu the Python thread keeps every core" in capsys.readouterr().out


@pytest.mark.parametrize(
  "method", sorted(set(algorithms.REGISTRY) - algorithms.CLASSIFICATION_ONLY)
)
def test_every_method_smoke(tmp_path, method):
  config = sinusoid.get_config("smoke")
  with config.unlocked():
    config.method, config.baseline, config.num_steps = method, False, 6
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert {"mse@0", "mse@1", "mse@10"} == set(summary)
  assert all(v["n"] + v["nonfinite"] == config.num_eval_tasks for v in summary.values())


@pytest.mark.parametrize(
  "flag, fragment",
  [
    ("--config.method=foo", "--config.method='foo': unknown method"),
    ("--config.method=protonet", "is a classification method"),
    ("--config.shots=0", "--config.shots=0"),
    ("--config.inner_lr=-0.1", "--config.inner_lr=-0.1"),
    ("--config.outer_lr=0.0", "--config.outer_lr=0.0"),
    ("--config.num_steps=-1", "--config.num_steps=-1"),
    ("--config.inner_steps=-2", "--config.inner_steps=-2"),
    ("--config.outer_lr_halve_every=-5", "--config.outer_lr_halve_every=-5"),
    ("--config.host_cores=-1", "--config.host_cores=-1"),
  ],
)
def test_bad_config_fails_in_one_line_before_anything(tmp_path, flag, fragment):
  config = sinusoid.get_config("smoke")
  name, value = flag[len("--config.") :].split("=")
  with config.unlocked():
    config[name] = type(config[name])(value) if config[name] is not None else int(value)
  with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
    train.validate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_binary_bad_flag_is_one_line_and_touches_nothing(tmp_path):
  out = _binary(f"--config={CONFIG}:smoke", f"--workdir={tmp_path / 'run'}", "--config.method=nope")
  assert out.returncode != 0
  lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
  assert lines == [lines[-1]] and "--config.method='nope'" in lines[-1]
  assert not (tmp_path / "run").exists()


def test_workdir_is_a_file(tmp_path):
  path = tmp_path / "f"
  path.write_text("x")
  with pytest.raises(ValueError, match="not a directory"):
    train.validate(sinusoid.get_config("smoke"), str(path))


def test_other_run_in_workdir_is_refused_and_kept(tmp_path):
  config = sinusoid.get_config("smoke")
  with config.unlocked():
    config.baseline, config.num_steps = False, 4
  train.train_and_evaluate(config, str(tmp_path))
  before = {p: os.path.getmtime(os.path.join(tmp_path, p)) for p in os.listdir(tmp_path)}
  with config.unlocked():
    config.method = "reptile"
  with pytest.raises(ValueError, match="method='maml'"):
    train.validate(config, str(tmp_path))
  assert before == {p: os.path.getmtime(os.path.join(tmp_path, p)) for p in os.listdir(tmp_path)}


def test_imaml_settings_are_part_of_an_imaml_runs_identity(tmp_path):
  config = sinusoid.get_config("smoke")
  with config.unlocked():
    config.method, config.baseline, config.num_steps = "imaml", False, 2
  train.train_and_evaluate(config, str(tmp_path / "imaml"))
  train.validate(config, str(tmp_path / "imaml"))  # the same settings resume
  # A run from before the damping and clipping fields existed (0: off) resumes too.
  saved = tmp_path / "imaml" / "config.json"
  previous = json.loads(saved.read_text())
  for field in ("imaml_damping", "imaml_lam_damping", "imaml_inner_clip"):
    assert config[field] == 0
    del previous[field]
  saved.write_text(json.dumps(previous))
  train.validate(config, str(tmp_path / "imaml"))
  for field, value in [("imaml_lam", 2.0), ("imaml_cg_steps", 3), ("imaml_lam_damping", 10.0)]:
    changed = config.copy_and_resolve_references()
    with changed.unlocked():
      changed[field] = value
    with pytest.raises(ValueError, match=f"{field}="):
      train.validate(changed, str(tmp_path / "imaml"))
  # Another method's run ignores the imaml_* fields it does not use.
  with config.unlocked():
    config.method = "maml"
  train.train_and_evaluate(config, str(tmp_path / "maml"))
  with config.unlocked():
    config.imaml_lam = 2.0
  train.validate(config, str(tmp_path / "maml"))


def test_outer_learning_rate_halves_every_k_steps():
  config = sinusoid.get_config("smoke")
  assert train.outer_learning_rate(config) == config.outer_lr  # 0: constant
  with config.unlocked():
    config.outer_lr, config.outer_lr_halve_every = 1e-3, 2000
  schedule = train.outer_learning_rate(config)
  rates = [float(schedule(step)) for step in (0, 1999, 2000, 3999, 4000, 6000)]
  assert rates == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 1.25e-4], rel=1e-6)


def test_unknown_config_variant():
  with pytest.raises(ValueError, match="variant"):
    sinusoid.get_config("big")


def test_readme_test_command_is_what_ci_runs():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash")[1:3]]
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci = f.read()
  assert blocks[1] in ci
  assert "experiments.meta_train" in blocks[0] and "sinusoid.py" in blocks[0]
