"""The absl binary and train_and_evaluate: smoke runs, bad input, workdir safety."""

import inspect
import json
import os
import re
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


REGRESSION = sorted(
  m for m, f in algorithms.REGISTRY.items() if "model" in inspect.signature(f).parameters
)


@pytest.mark.parametrize("method", REGRESSION)
def test_every_method_smoke(tmp_path, method):
  config = sinusoid.get_config(f"{method},smoke")
  assert set(config.learner) == set(algorithms.hyperparameters(method))
  with config.unlocked():
    config.baseline, config.num_steps = False, 6
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert set(config.eval_steps) >= {0, 1, 10}
  want = {f"{name}@{k}" for name in ("mse",) for k in config.eval_steps}
  if method in algorithms.PROBABILISTIC:  # scored as distributions too
    names = ("mse", "loglik", "coverage_50", "coverage_90", "coverage_95")
    want = {f"{name}@{k}" for name in names for k in config.eval_steps}
  assert want == set(summary)
  assert all(v["n"] + v["nonfinite"] == config.num_eval_tasks for v in summary.values())
  # A predictive that mixes sampled functions (PLATIPUS's) also gets their figure.
  assert (tmp_path / "samples.png").exists() == (method == "platipus")


@pytest.mark.parametrize(
  "flag, fragment",
  [
    ("--config.method=foo", "--config.method='foo': unknown method"),
    ("--config.method=protonet", "learns an embedding for classification"),
    ("--config.shots=0", "--config.shots=0"),
    ("--config.learner.inner_lr=-0.1", "--config.learner (maml): inner_lr must be > 0"),
    ("--config.outer_lr=0.0", "--config.outer_lr=0.0"),
    ("--config.num_steps=-1", "--config.num_steps=-1"),
    ("--config.learner.inner_steps=-2", "--config.learner (maml): inner_steps must be"),
    ("--config.outer_lr_halve_every=-5", "--config.outer_lr_halve_every=-5"),
    ("--config.host_cores=-1", "--config.host_cores=-1"),
    ("--config.strategy=fast", "--config.strategy must be one of"),
    ("--config.on_nonfinite=ignore", "--config.on_nonfinite='ignore'"),
    ("--config.seed=-1", "--config.seed=-1"),
    ("--config.max_skipped_fraction=1.5", "--config.max_skipped_fraction=1.5"),
  ],
)
def test_bad_config_fails_in_one_line_before_anything(tmp_path, flag, fragment):
  config = sinusoid.get_config("smoke")
  name, value = flag[len("--config.") :].split("=")
  *parents, leaf = name.split(".")
  block = config
  for parent in parents:
    block = block[parent]
  with config.unlocked():
    kind = type(block[leaf]) if block[leaf] is not None else int
    block[leaf] = kind(value)
  with pytest.raises(ValueError, match=re.escape(fragment)):
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


def test_the_learner_block_is_part_of_a_runs_identity(tmp_path):
  config = sinusoid.get_config("imaml,smoke")
  with config.unlocked():
    config.baseline, config.num_steps = False, 2
  train.train_and_evaluate(config, str(tmp_path / "imaml"))
  saved = json.loads((tmp_path / "imaml" / "config.json").read_text())
  # config.json records every hyperparameter, the factory's defaults filled in.
  assert saved["learner"] == {**algorithms.hyperparameters("imaml"), "inner_lr": 0.01}
  train.validate(config, str(tmp_path / "imaml"))  # the same settings resume
  for field, value in [("lam", 2.0), ("cg_steps", 3), ("lam_damping", 10.0), ("inner_steps", 3)]:
    changed = config.copy_and_resolve_references()
    with changed.unlocked():
      changed.learner[field] = value
    with pytest.raises(ValueError, match=f"learner.{field}="):
      train.validate(changed, str(tmp_path / "imaml"))
  # Setting a default explicitly is the same run.
  same = config.copy_and_resolve_references()
  with same.unlocked():
    same.learner.cg_steps = 5
  train.validate(same, str(tmp_path / "imaml"))


def test_runs_written_before_learner_blocks_resume_or_are_refused_by_name(tmp_path):
  """A config.json with flat `inner_lr`, `inner_steps` and `imaml_*` fields is upgraded."""
  config = sinusoid.get_config("imaml,smoke")
  with config.unlocked():
    config.baseline, config.num_steps = False, 2
  workdir = tmp_path / "old"
  (workdir / "checkpoints" / "10").mkdir(parents=True)  # the old run took steps
  legacy = {k: v for k, v in json.loads(config.to_json()).items() if k != "learner"}
  legacy.update(
    inner_lr=0.01,
    inner_steps=None,
    remat=False,
    imaml_lam=1.0,
    imaml_cg_steps=5,
    imaml_solver="cg",
    imaml_damping=0.0,
    imaml_lam_damping=0.0,
    imaml_inner_clip=0.0,
  )
  (workdir / "config.json").write_text(json.dumps(legacy))
  train.validate(config, str(workdir))
  upgraded = train.load_config(str(workdir))
  assert upgraded.learner.to_dict() == {
    "inner_lr": 0.01,
    "lam": 1.0,
    "cg_steps": 5,
    "solver": "cg",
    "damping": 0.0,
    "lam_damping": 0.0,
    "inner_clip": 0.0,
  }
  legacy["imaml_lam"] = 2.0
  (workdir / "config.json").write_text(json.dumps(legacy))
  with pytest.raises(ValueError, match=r"learner\.lam=2\.0 \(now 1\.0\)"):
    train.validate(config, str(workdir))


def test_changing_the_method_on_the_command_line_takes_its_defaults(capsys):
  """`--config.method=reptile` on a MAML config: Reptile's own inner_steps, a note for the rest."""
  config = sinusoid.get_config("smoke")
  with config.unlocked():
    config.method = "reptile"
    config.learner.remat = True
  assert train.learner_kwargs(config, verbose=True) == {"inner_lr": 0.01}
  assert "--config.learner.remat=True is not a hyperparameter of reptile" in capsys.readouterr().out
  assert train.identity(config)["learner"] == {"inner_lr": 0.01, "inner_steps": 5}


def test_outer_learning_rate_halves_every_k_steps():
  config = sinusoid.get_config("smoke")
  assert train.outer_learning_rate(config) == config.outer_lr  # 0: constant
  with config.unlocked():
    config.outer_lr, config.outer_lr_halve_every = 1e-3, 2000
  schedule = train.outer_learning_rate(config)
  rates = [float(schedule(step)) for step in (0, 1999, 2000, 3999, 4000, 6000)]
  assert rates == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 1.25e-4], rel=1e-6)


def test_unknown_config_argument():
  with pytest.raises(ValueError, match="unknown config argument 'big'"):
    sinusoid.get_config("big")
  assert sinusoid.get_config("imaml,smoke").method == "imaml"


def test_readme_test_command_is_what_ci_runs():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash")[1:3]]
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci = f.read()
  assert blocks[1] in ci
  assert "experiments.meta_train" in blocks[0] and "sinusoid.py" in blocks[0]


def test_command_lines_of_the_flat_layout_still_run(tmp_path):
  """`--config.method=X --config.imaml_lam=...` (the layout before learner blocks) is upgraded."""
  from experiments import meta_train

  flat = ["--config.method=imaml", "--config.imaml_lam=2.0", "--config.inner_steps=3"]
  argv, notes = meta_train.upgrade_argv(
    ["prog", f"--config={CONFIG}:smoke", *flat, "--config.remat=False"]
  )
  assert argv == [
    "prog",
    f"--config={CONFIG}:imaml,smoke",
    "--config.learner.lam=2.0",
    "--config.learner.inner_steps=3",
  ]
  assert any("remat=False is not a hyperparameter of imaml" in n for n in notes)
  assert meta_train.upgrade_argv(["prog", f"--config={CONFIG}:smoke"]) == (
    ["prog", f"--config={CONFIG}:smoke"],
    [],
  )
  workdir = tmp_path / "run"
  out = _binary(
    f"--config={CONFIG}:smoke",
    f"--workdir={workdir}",
    "--config.method=reptile",
    "--config.inner_steps=2",
    "--config.baseline=False",
    "--config.num_steps=5",
  )
  assert out.returncode == 0, out.stderr[-2000:]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["method"] == "reptile" and saved["learner"] == {"inner_lr": 0.01, "inner_steps": 2}


@pytest.mark.parametrize(
  "flag, fragment",
  [
    ("--config.foo=1", "--config.foo: unknown config field 'foo' for"),
    ("--config.learner.lam=2", "lam is a hyperparameter of imaml (--config="),
    ("--config.shots=abc", "error: flag --config.shots=abc: invalid literal"),
    ("--config.learner.inner_lr=-1", "--config.learner (maml): inner_lr must be > 0"),
    ("--config.strategy=fast", "--config.strategy must be one of"),
  ],
)
def test_every_config_mistake_is_one_line_before_anything_is_written(tmp_path, flag, fragment):
  out = _binary(f"--config={CONFIG}:smoke", f"--workdir={tmp_path / 'run'}", flag)
  assert out.returncode != 0
  lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
  assert not (tmp_path / "run").exists()


def test_a_run_that_took_no_step_does_not_block_its_workdir(tmp_path):
  config = sinusoid.get_config("smoke")
  with config.unlocked():
    config.baseline, config.num_steps = False, 2
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"method": "reptile", "seed": 5}))
  train.validate(config, str(workdir))  # no checkpoint: nothing to protect


def test_a_resumed_run_appends_to_config_json_and_keeps_the_record(tmp_path):
  config = sinusoid.get_config("smoke")
  with config.unlocked():
    config.baseline, config.num_steps = False, 10
  train.train_and_evaluate(config, str(tmp_path))
  first = json.loads((tmp_path / "config.json").read_text())
  with config.unlocked():
    config.num_steps = 20
  train.train_and_evaluate(config, str(tmp_path))
  after = json.loads((tmp_path / "config.json").read_text())
  assert after.pop("resumes")[0]["changed"] == {"num_steps": 20}
  assert after == first  # the record of the steps already taken is untouched
  with config.unlocked():
    config.sample_shards = 5  # another data stream: refused
  with pytest.raises(train.ConfigError, match="sample_shards=0"):
    train.validate(config, str(tmp_path))
  with config.unlocked():
    config.sample_shards, config.on_nonfinite = 0, "skip"
  with pytest.raises(train.ConfigError, match="on_nonfinite='raise'"):
    train.validate(config, str(tmp_path))


def test_a_task_of_its_own_family_is_run_by_its_module(tmp_path, monkeypatch):
  # experiments.families: validate and train_and_evaluate go to the family's module.
  import types

  from experiments import families

  calls = []
  module = types.ModuleType("toy_family")
  module.validate = lambda config, workdir: calls.append(("validate", config.task))
  module.train_and_evaluate = lambda config, workdir: calls.append(("train", workdir)) or {"x": 1}
  monkeypatch.setitem(sys.modules, "toy_family", module)
  monkeypatch.setitem(families.REGISTRY, "toy", "toy_family")
  config = sinusoid.get_config("smoke")
  with config.unlocked():
    config.task = "toy"
  train.validate(config, str(tmp_path / "run"))
  assert train.train_and_evaluate(config, str(tmp_path / "run")) == {"x": 1}
  assert calls == [("validate", "toy"), ("train", str(tmp_path / "run"))]
  assert families.family("sinusoid") is None
  with config.unlocked():
    config.task = "nonesuch"
  with pytest.raises(train.ConfigError, match="unknown task; choose one of sinusoid, omniglot, "):
    train.validate(config, str(tmp_path / "run"))
