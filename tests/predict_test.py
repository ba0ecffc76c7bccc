"""experiments/predict.py and evaluate.py: a smoke ProtoNets run classifies folders of
generated images and is evaluated on episodes of other shapes."""

import collections
import csv
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import evaluate, predict, train
from experiments.configs import maml_omniglot, protonet_omniglot, sinusoid
from metalearn import algorithms
from metalearn import episodes as ep
from metalearn.models import MLP, Conv4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image_fixtures():
  """tests/data/images_test.py, for its drawings and their file-format variants."""
  path = os.path.join(ROOT, "tests", "data", "images_test.py")
  spec = importlib.util.spec_from_file_location("images_test_fixtures", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _fake_omniglot(data_dir=None, *, zip_dir=None, split_protocol="vinyals"):
  """Random uint8 splits shaped as `load_omniglot` returns them (no data, no network)."""
  del data_dir, zip_dir, split_protocol
  rng = np.random.default_rng(0)
  sizes = {"train": 30, "val": 10, "test": 10}
  return {k: rng.integers(0, 256, (n, 20, 28, 28), dtype=np.uint8) for k, n in sizes.items()}


@pytest.fixture(scope="module")
def protonet_run(tmp_path_factory):
  """A ProtoNets run (5-way 1-shot, the smoke config) trained on the fake data."""
  workdir = str(tmp_path_factory.mktemp("protonet_run"))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train, "load_omniglot", _fake_omniglot)
    train.train_and_evaluate(protonet_omniglot.get_config("smoke"), workdir)
  return workdir


def _save(path, seed, size=(105, 105), mode="L"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
  Image.fromarray(pixels).convert(mode).save(path)


def _folders(root, classes=("alpha", "beta", "gamma"), shots=2, queries=4):
  """`root/support/<class>/<i>.png` and `root/query/q<i>.*` of assorted sizes and modes."""
  for c, name in enumerate(classes):
    for i in range(shots):
      _save(os.path.join(root, "support", name, f"{i}.png"), 10 * c + i)
  for i in range(queries):
    ext, size, mode = [("png", (105, 105), "L"), ("jpg", (60, 45), "RGB")][i % 2]
    _save(os.path.join(root, "query", f"q{i}.{ext}"), 100 + i, size, mode)
  return os.path.join(root, "support"), os.path.join(root, "query")


def _binary(*args, cwd):
  return subprocess.run(
    [sys.executable, "-m", "experiments.predict", *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": ROOT},
  )


def test_binary_writes_one_row_per_query(protonet_run, tmp_path):
  """3 classes (the run was trained 5-way), 2 shots; the CSV goes to the current directory."""
  support, query = _folders(str(tmp_path))
  images = sorted(os.listdir(query))
  (tmp_path / "query" / "notes.txt").write_text("not an image")
  (tmp_path / "query" / "older").mkdir()
  (tmp_path / "query" / ".DS_Store").write_bytes(b"\0")  # hidden: not worth a line
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  out = _binary(
    f"--workdir={protonet_run}", f"--support_dir={support}", f"--query_dir={query}", cwd=cwd
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [
    f"skipped {query}/notes.txt: not an image (no .png, .jpg, .jpeg, .bmp, .gif, .webp extension)",
    f"skipped {query}/older: a folder (only the images directly in --query_dir are read)",
  ]
  with open(cwd / "predictions.csv", newline="") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["file", "predicted_class", "score", "entropy"]
  assert [r[0] for r in rows[1:]] == images
  assert all(r[1] in ("alpha", "beta", "gamma") for r in rows[1:])
  scores = [float(r[2]) for r in rows[1:]]
  assert all(0.0 <= s <= 1.0 for s in scores)
  assert all(s >= 1 / 3 - 1e-6 for s in scores)  # the arg-max of a 3-class softmax
  entropies = [float(r[3]) for r in rows[1:]]
  assert all(0.0 <= h <= 1.0 for h in entropies)
  assert "support: 3 classes, 2 shots each (6 images)" in out.stdout
  assert "queries: 4 images" in out.stdout
  assert "skipped: 2 entries that are not images (named on stderr)" in out.stdout
  worst = int(np.argmax(entropies))
  assert f"highest entropy: {rows[1 + worst][0]} ({entropies[worst]:.3f})" in out.stdout
  counts = collections.Counter(r[1] for r in rows[1:])
  assert f"predicted: alpha={counts['alpha']}, beta={counts['beta']}, gamma={counts['gamma']}" in (
    out.stdout
  )
  assert f"(mean score {np.mean(scores):.3f}, mean entropy {np.mean(entropies):.3f})" in out.stdout


def test_copies_of_the_support_images_get_their_own_class(protonet_run, tmp_path):
  """1-shot support; the queries are the support images again, renamed and reordered.

  Scored as one batch (`transductive`), the query batch holds the same images
  as the support batch, so the batch statistics agree and each query's
  embedding is its class prototype (up to rounding): distance 0, the arg-max
  for any theta with distinct embeddings.
  """
  classes = ["k0", "k1", "k2", "k3"]
  support, query = _folders(str(tmp_path), classes, shots=1, queries=0)
  os.makedirs(query)
  source = {}
  for i, name in zip([2, 0, 3, 1], classes, strict=True):  # sorted query order != class order
    shutil.copy(os.path.join(support, name, "0.png"), os.path.join(query, f"copy{i}.png"))
    source[f"copy{i}.png"] = name
  result = predict.predict(protonet_run, support, query, transductive=True)
  assert result.files == sorted(source)
  assert result.predicted == [source[f] for f in result.files]
  assert result.classes == classes and result.shots == dict.fromkeys(classes, 1)

  predict.write_csv(str(tmp_path / "p.csv"), result)
  with open(tmp_path / "p.csv", newline="") as f:
    rows = list(csv.reader(f))
  assert rows[1:] == [
    [f, source[f], f"{s:.6f}", f"{h:.6f}"]
    for f, s, h in zip(result.files, result.scores, result.entropy, strict=True)
  ]


def _entropy(p, ways):
  p = np.asarray(p, np.float64)
  return float(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)) / math.log(ways))


def test_entropy_is_that_of_the_class_probabilities(protonet_run, tmp_path):
  """The entropy column is the normalised entropy of the probabilities behind the score."""
  support, query = _folders(str(tmp_path), ("a", "b", "c", "d"), shots=1, queries=6)
  result = predict.predict(protonet_run, support, query)
  p = result.probabilities
  assert p.shape == (6, 4)
  np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(result.scores, p.max(axis=1), rtol=1e-12)
  assert [result.classes[i] for i in p.argmax(axis=1)] == result.predicted
  np.testing.assert_allclose(result.entropy, [_entropy(row, 4) for row in p], rtol=1e-9)
  assert np.all((result.entropy >= 0.0) & (result.entropy <= 1.0))

  # Two classes: the CSV alone gives the distribution, (score, 1 - score).
  support, query = _folders(str(tmp_path / "two"), ("a", "b"), shots=1, queries=6)
  result = predict.predict(protonet_run, support, query)
  predict.write_csv(str(tmp_path / "two.csv"), result)
  with open(tmp_path / "two.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    score = float(row["score"])
    assert float(row["entropy"]) == pytest.approx(_entropy([score, 1 - score], 2), abs=2e-5)


def test_class_probabilities_from_the_outputs():
  """Softmax of the logits; Relation Networks' logits (log scores) give the normalised scores."""
  logits = np.array([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [np.log(2.0), 0.0, -np.inf]])
  probs, scores, entropy = predict.class_probabilities(logits)
  np.testing.assert_allclose(probs, [[1 / 3] * 3, [1, 0, 0], [2 / 3, 1 / 3, 0]], atol=1e-12)
  np.testing.assert_allclose(scores, [1 / 3, 1, 2 / 3], atol=1e-12)
  np.testing.assert_allclose(entropy, [1.0, 0.0, _entropy([2 / 3, 1 / 3, 0], 3)], atol=1e-12)
  relation = np.log(np.array([[0.9, 0.05, 0.05], [0.01, 0.01, 0.01], [0.3, 0.1, 1e-30]]))
  probs, scores, entropy = predict.class_probabilities(relation)
  np.testing.assert_allclose(probs, [[0.9, 0.05, 0.05], [1 / 3] * 3, [0.75, 0.25, 0.0]], atol=1e-12)
  np.testing.assert_allclose(scores, [0.9, 1 / 3, 0.75], atol=1e-12)
  np.testing.assert_allclose(
    entropy, [_entropy([0.9, 0.05, 0.05], 3), 1.0, _entropy([0.75, 0.25, 0], 3)], atol=1e-12
  )


def test_images_are_classified_as_they_look(protonet_run, tmp_path):
  """Each drawing saved as RGBA on transparent, LA, a transparent palette, RGB, 16-bit,
  EXIF-rotated PNG and JPEG, and twice the size, is classified as the plain drawing.

  1-shot support of the plain grayscale drawings; the queries are all the
  variants of all drawings, scored as one batch, so (as in the test above) the
  query batch has the support batch's statistics and each query sits on its own
  class's prototype.
  """
  fixtures = _image_fixtures()
  shapes = ["cross", "ring", "ell", "tee"]
  query = tmp_path / "query"
  query.mkdir()
  for shape in shapes:
    (tmp_path / "support" / shape).mkdir(parents=True)
    for name, data in fixtures.variants(shape).items():
      if name == "gray":
        (tmp_path / "support" / shape / "0.png").write_bytes(data)
      ext = "jpg" if "jpeg" in name else "png"
      (query / f"{shape} {name}.{ext}").write_bytes(data)
  result = predict.predict(protonet_run, str(tmp_path / "support"), str(query), transductive=True)
  assert len(result.files) == 4 * 9
  assert {f: p for f, p in zip(result.files, result.predicted, strict=True)} == {
    f: f.split(" ")[0] for f in result.files
  }


def _break(kind, support, query):
  """Damages the input folders; returns the path the error must name."""
  if kind == "empty class folder":
    path = os.path.join(support, "delta")
    os.makedirs(path)
    return path
  if kind == "non-image file in a class folder":
    path = os.path.join(support, "beta", "notes.txt")
    with open(path, "w") as f:
      f.write("not an image")
    return path
  if kind == "subfolder in a class folder":
    path = os.path.join(support, "beta", "more")
    _save(os.path.join(path, "2.png"), 0)
    return path
  if kind == "unreadable support image":
    path = os.path.join(support, "beta", "broken.png")
  elif kind == "unreadable query image":
    path = os.path.join(query, "broken.jpg")
  elif kind == "empty query dir":
    shutil.rmtree(query)
    os.makedirs(os.path.join(query, "sub"))
    return query
  elif kind == "support without subfolders":
    shutil.rmtree(support)
    _save(os.path.join(support, "loose.png"), 0)
    return support
  elif kind == "missing query dir":
    shutil.rmtree(query)
    return query
  else:
    raise AssertionError(kind)
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n not really")
  return path


BAD_INPUTS = [
  "empty class folder",
  "non-image file in a class folder",
  "subfolder in a class folder",
  "unreadable support image",
  "unreadable query image",
  "empty query dir",
  "support without subfolders",
  "missing query dir",
]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_names_the_path(protonet_run, tmp_path, kind):
  support, query = _folders(str(tmp_path))
  path = _break(kind, support, query)
  with pytest.raises((ValueError, FileNotFoundError)) as raised:
    predict.predict(protonet_run, support, query)
  message = str(raised.value)
  assert path in message and "\n" not in message
  assert " at 0x" not in message  # no <_io.BytesIO object at 0x...>: the file is named


def test_binary_reports_bad_input_in_one_line(protonet_run, tmp_path):
  support, query = _folders(str(tmp_path))
  path = _break("empty class folder", support, query)
  out = _binary(
    f"--workdir={protonet_run}",
    f"--support_dir={support}",
    f"--query_dir={query}",
    f"--output_dir={tmp_path / 'out'}",
    cwd=tmp_path,
  )
  assert out.returncode != 0
  assert out.stderr.strip().splitlines() == [
    f"error: class folder {path} holds no images (.png, .jpg, .jpeg, .bmp, .gif, .webp); "
    "every class needs at least one"
  ]
  assert not (tmp_path / "out").exists()


def test_stray_support_file_is_refused_with_its_name(protonet_run, tmp_path):
  support, query = _folders(str(tmp_path))
  path = _break("non-image file in a class folder", support, query)
  with pytest.raises(ValueError) as raised:
    predict.predict(protonet_run, support, query)
  assert str(raised.value) == (
    f"{path}: not an image (no .png, .jpg, .jpeg, .bmp, .gif, .webp extension); the class "
    "folders of --support_dir must hold only images (a class would silently lose an "
    "example): convert or remove it"
  )


def test_loose_support_files_are_skipped_and_named(protonet_run, tmp_path):
  """Files beside the class folders belong to no class: reported, and the classes are intact."""
  support, query = _folders(str(tmp_path))
  _save(os.path.join(support, "stray.png"), 0)
  with open(os.path.join(support, "README"), "w") as f:
    f.write("my classes")
  result = predict.predict(protonet_run, support, query)
  assert result.classes == ["alpha", "beta", "gamma"]
  assert result.shots == {"alpha": 2, "beta": 2, "gamma": 2}
  assert result.skipped == [
    f"{support}/README: not an image (no .png, .jpg, .jpeg, .bmp, .gif, .webp extension)",
    f"{support}/stray.png: not in a class folder (support images go in support_dir/<class>/)",
  ]


def test_output_dir_is_checked_before_the_model_runs(tmp_path):
  """An --output_dir that is a file fails at once, in one line, before any run is read."""
  support, query = _folders(str(tmp_path))
  taken = tmp_path / "taken"
  taken.write_text("a file")
  out = _binary(
    f"--workdir={tmp_path / 'no_such_run'}",  # reading the run would fail: it must not get there
    f"--support_dir={support}",
    f"--query_dir={query}",
    f"--output_dir={taken}",
    cwd=tmp_path,
  )
  assert out.returncode != 0
  assert out.stderr.strip().splitlines() == [
    f"error: --output_dir={taken}: exists and is not a folder"
  ]
  with pytest.raises(ValueError, match=re.escape(f"--output_dir={taken}/sub: {taken} is a file")):
    predict.check_output_dir(str(taken / "sub"))
  (tmp_path / "out" / predict.CSV_NAME).mkdir(parents=True)
  with pytest.raises(
    ValueError, match=re.escape(f"--output_dir={tmp_path / 'out'}: {tmp_path}/out/predictions")
  ):
    predict.check_output_dir(str(tmp_path / "out"))
  predict.check_output_dir(str(tmp_path / "new" / "deeper"))  # created later, when writing
  assert not (tmp_path / "new").exists()


def _run_folder(tmp_path, config, checkpoint=True):
  """A workdir with the config.json a run of `config` writes, and optionally a checkpoint folder."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json())
  if checkpoint:
    (workdir / "checkpoints" / "2").mkdir(parents=True)  # never read: checks come first
  return str(workdir)


def test_missing_workdir_config_or_checkpoint(tmp_path):
  support, query = _folders(str(tmp_path))
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=re.escape(f"--workdir={missing}: no such folder")):
    predict.predict(missing, support, query)
  workdir = _run_folder(tmp_path, protonet_omniglot.get_config("smoke"), checkpoint=False)
  with pytest.raises(FileNotFoundError, match=re.escape(f"no checkpoint in {workdir}/checkpoints")):
    predict.predict(workdir, support, query)
  os.remove(os.path.join(workdir, "config.json"))
  with pytest.raises(FileNotFoundError, match=re.escape(f"{workdir}/config.json not found")):
    predict.predict(workdir, support, query)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # nothing created


def test_fixed_head_needs_the_trained_ways(tmp_path):
  """MAML's head has `ways` outputs: 3 class folders for a 5-way run is refused, naming both."""
  support, query = _folders(str(tmp_path))
  workdir = _run_folder(tmp_path, maml_omniglot.get_config("smoke"))
  with pytest.raises(ValueError, match="has 3 class folders") as raised:
    predict.predict(workdir, support, query)
  assert support in str(raised.value) and "trained 5-way" in str(raised.value)


def test_sinusoid_run_is_refused(tmp_path):
  support, query = _folders(str(tmp_path))
  workdir = _run_folder(tmp_path, sinusoid.get_config("smoke"))
  with pytest.raises(ValueError, match="task is 'sinusoid'"):
    predict.predict(workdir, support, query)


def test_evaluate_reproduces_the_runs_own_evaluation(protonet_run, monkeypatch):
  """The run's own shape, episode count and batch size: the same episodes, the same accuracy."""
  monkeypatch.setattr(train, "load_omniglot", _fake_omniglot)
  config = train.load_config(protonet_run)
  with open(os.path.join(protonet_run, "eval.json")) as f:
    expected = json.load(f)["metrics"]["accuracy"]
  report = evaluate.evaluate(
    protonet_run, num_tasks=config.num_eval_tasks, batch_size=config.eval_batch_size
  )
  assert (report["ways"], report["shots"], report["queries"]) == (5, 1, config.eval_queries)
  assert report["metrics"]["accuracy"]["n"] == config.num_eval_tasks
  np.testing.assert_allclose(report["metrics"]["accuracy"]["mean"], expected["mean"], rtol=1e-6)


def test_evaluate_other_ways_and_shots(protonet_run, monkeypatch, tmp_path):
  """A 5-way 1-shot ProtoNets run scored on 8-way 3-shot episodes; the binary writes the JSON."""
  monkeypatch.setattr(train, "load_omniglot", _fake_omniglot)
  report = evaluate.evaluate(protonet_run, ways=8, shots=3, queries=2, num_tasks=6, batch_size=4)
  acc = report["metrics"]["accuracy"]
  assert (report["ways"], report["shots"], report["queries"]) == (8, 3, 2)
  assert report["batch_size"] == 4
  assert report["trained"] == {"ways": 5, "shots": 1}
  assert acc["n"] == 6 and 0.0 <= acc["mean"] <= 1.0 and acc["nonfinite"] == 0
  # Accuracy is a multiple of 1 / (8 ways x 2 queries) per episode.
  per_episode = acc["mean"] * 6 * 16
  assert abs(per_episode - round(per_episode)) < 1e-4
  with pytest.raises(ValueError, match="--ways=1: must be an integer >= 2"):
    evaluate.evaluate(protonet_run, ways=1)
  with pytest.raises(ValueError, match=r"--ways=11 .*test split cannot hold these episodes"):
    evaluate.evaluate(protonet_run, ways=11)  # the fake test split has 10 classes
  with pytest.raises(ValueError, match=r"--shots=5 --queries=16: .*test split"):
    evaluate.evaluate(protonet_run, shots=5, queries=16)
  # Only the test split's episodes matter: a run trained with 19 queries per
  # class (as Relation Networks are) is scored on 5-shot episodes.
  run = str(tmp_path / "trained_with_19_queries")
  shutil.copytree(protonet_run, run)
  with open(os.path.join(run, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump({**config, "queries": 19}, f)
  report = evaluate.evaluate(run, shots=5, queries=5, num_tasks=2)
  assert report["metrics"]["accuracy"]["n"] == 2


def test_evaluate_default_batch_bounds_the_class_query_pairs():
  """100 episodes where they fit; Relation-sized 20-way batches shrink; never below 1."""
  assert evaluate.default_batch_size(5, 19) == evaluate.MAX_BATCH
  assert evaluate.default_batch_size(20, 5) == evaluate.MAX_BATCH
  for ways, queries in ((20, 19), (60, 5), (200, 19)):
    size = evaluate.default_batch_size(ways, queries)
    assert 1 <= size < evaluate.MAX_BATCH
    assert size == 1 or size * ways * ways * queries <= evaluate.PAIRS_PER_BATCH
    assert (size + 1) * ways * ways * queries > evaluate.PAIRS_PER_BATCH
  assert evaluate.default_batch_size(20, 19) == 26


def test_evaluate_fixed_head_keeps_its_ways(tmp_path):
  workdir = _run_folder(tmp_path, maml_omniglot.get_config("smoke"))
  with pytest.raises(ValueError, match="trained 5-way and its classifier head has 5 outputs"):
    evaluate.evaluate(workdir, ways=20)


def test_evaluate_a_run_with_a_learning_rate_schedule(tmp_path, monkeypatch):
  """A run trained with `outer_lr_halve_every` restores (its optimizer state has a schedule)."""
  monkeypatch.setattr(train, "load_omniglot", _fake_omniglot)
  config = protonet_omniglot.get_config("smoke")
  with config.unlocked():
    config.outer_lr_halve_every = 1
  train.train_and_evaluate(config, str(tmp_path))
  with open(os.path.join(tmp_path, "eval.json")) as f:
    expected = json.load(f)["metrics"]["accuracy"]
  report = evaluate.evaluate(
    str(tmp_path), num_tasks=config.num_eval_tasks, batch_size=config.eval_batch_size
  )
  np.testing.assert_allclose(report["metrics"]["accuracy"]["mean"], expected["mean"], rtol=1e-6)


def _probabilities_by_file(result):
  return dict(zip(result.files, result.probabilities, strict=True))


def test_a_querys_prediction_does_not_depend_on_the_other_queries(protonet_run, tmp_path):
  """Removing or adding query images leaves the others' class probabilities as they were.

  Conv4 normalises with its batch's statistics, so scored as one batch
  (`transductive=True`, the behaviour before inductive scoring) the same image
  gets other probabilities beside other queries; scored on its own (the
  default) it does not.
  """
  support, query = _folders(str(tmp_path), ("a", "b", "c"), shots=2, queries=6)
  names = sorted(os.listdir(query))
  fewer = tmp_path / "fewer"
  more = tmp_path / "more"
  fewer.mkdir()
  shutil.copytree(query, more)
  for name in names[1:3]:
    shutil.copy(os.path.join(query, name), fewer / name)
  for i in range(5):
    _save(str(more / f"z_extra{i}.png"), 500 + i)
  runs = {d: predict.predict(protonet_run, support, str(d)) for d in (query, fewer, more)}
  everything = _probabilities_by_file(runs[query])
  for folder in (fewer, more):
    for name, p in _probabilities_by_file(runs[folder]).items():
      if name in everything:
        np.testing.assert_allclose(p, everything[name], rtol=1e-5, atol=1e-6)
  assert not runs[query].transductive
  # The transductive flag keeps the batch behaviour, under which the same images differ.
  together = {d: predict.predict(protonet_run, support, str(d), transductive=True) for d in runs}
  assert together[query].transductive
  everything = _probabilities_by_file(together[query])
  gaps = [
    np.max(np.abs(p - everything[name]))
    for folder in (fewer, more)
    for name, p in _probabilities_by_file(together[folder]).items()
    if name in everything
  ]
  assert max(gaps) > 1e-3


def test_scorings_agree_for_a_model_without_batch_statistics():
  """A per-example embedding: batch, with_support and alone give the same outputs;
  with_support is row n of the predictor on [support; query]."""
  rng = np.random.default_rng(0)
  xs, xq = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
  support = ep.make_split(jnp.asarray(xs), jnp.arange(6) % 3)
  episode = ep.Episode(support, ep.make_split(jnp.asarray(xq), jnp.arange(4) % 3))
  learner = algorithms.protonet(MLP(hidden=(8,), out=4), ways=3)
  theta = learner.init(jax.random.PRNGKey(0), episode)
  outs = {
    s: predict.scored_adapt(learner.adapt, s)(theta, support, None)(jnp.asarray(xq))
    for s in predict.SCORINGS
  }
  for s in ("with_support", "alone"):
    np.testing.assert_allclose(outs[s], outs["batch"], rtol=1e-5, atol=1e-6)
  # With Conv4 (batch statistics) the three differ, and with_support is row n of [support; x_i].
  images = rng.uniform(size=(7, 16, 16, 1)).astype(np.float32)
  support = ep.make_split(jnp.asarray(images[:3]), jnp.arange(3))
  episode = ep.Episode(support, ep.make_split(jnp.asarray(images[3:]), jnp.arange(4) % 3))
  learner = algorithms.protonet(Conv4(ways=None, channels=4, blocks=2), ways=3)
  theta = learner.init(jax.random.PRNGKey(0), episode)
  predictor = learner.adapt(theta, support, None)
  each = predict.scored_adapt(learner.adapt, "with_support")(theta, support, None)(images[3:])
  for i in range(4):
    row = predictor(jnp.asarray(np.concatenate([images[:3], images[3 + i : 4 + i]])))[-1]
    np.testing.assert_allclose(each[i], row, rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(each - predictor(jnp.asarray(images[3:]))))) > 1e-3
  with pytest.raises(ValueError, match="scoring must be one of"):
    predict.scored_adapt(learner.adapt, "transductive")


def test_evaluate_scorings(protonet_run, monkeypatch):
  """evaluate --scoring: batch is the run's own evaluation; the others are named in the report."""
  monkeypatch.setattr(train, "load_omniglot", _fake_omniglot)
  reports = {
    s: evaluate.evaluate(protonet_run, num_tasks=4, batch_size=2, scoring=s)
    for s in ("batch", "with_support", "alone")
  }
  for s, report in reports.items():
    assert report["scoring"] == s and report["metrics"]["accuracy"]["n"] == 4
  with pytest.raises(ValueError, match="--scoring='x': choose one of"):
    evaluate.evaluate(protonet_run, scoring="x")
