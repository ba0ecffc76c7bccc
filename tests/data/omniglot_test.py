"""Omniglot: offline TFDS preparation from a generated zip fixture, cache, splits, errors.

Nothing here touches the network. The TFDS tests need TensorFlow (the `images`
extra) and are skipped without it. Checks of the real data run when the
authors' zips are found (`$METALEARN_OMNIGLOT_DIR` or `../shared/data/omniglot`
from the repository root); the full TFDS preparation of the real data (1-3
minutes) runs only with `METALEARN_TEST_REAL_OMNIGLOT=1`.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from metalearn.data import images as image_utils
from metalearn.data import omniglot

REPO = Path(__file__).resolve().parents[2]


def _has_tensorflow() -> bool:
  try:
    return importlib.util.find_spec("tensorflow") is not None
  except (ImportError, ValueError):
    return False


HAS_TF = _has_tensorflow()
# The fixture is not the full data set: check_zip_dir's count warnings are expected.
pytestmark = pytest.mark.filterwarnings("ignore:.*the full Omniglot has:UserWarning")
needs_tf = pytest.mark.skipif(
  not HAS_TF, reason="TensorFlow is not installed (pip install '.[images]'); TFDS can't prepare"
)

# Fixture: 2 background alphabets (5 characters), 2 evaluation alphabets (4), 20 drawings each.
BACKGROUND = {"Alpha_(test)": [1, 2, 3], "Beta": [4, 5]}
EVALUATION = {"Gamma": [6, 7], "Delta": [8, 9]}
SMALL1 = {"Alpha_(test)": [1, 2]}
SMALL2 = {"Beta": [4]}


def drawing(char_id: int, index: int) -> np.ndarray:
  """A distinct 105x105 bool drawing (True = white), black ink at a character-dependent spot."""
  rng = np.random.default_rng([char_id, index])
  white = np.ones((105, 105), bool)
  top, left = 5 + 9 * (char_id % 9), 5 + 7 * (char_id // 2)
  white[top : top + 30, left : left + 4] = False  # a vertical stroke: rotations differ
  white[rng.integers(0, 105, 40), rng.integers(0, 105, 40)] = False
  return white


def write_zip(path: Path, top: str, alphabets: dict[str, list[int]], corrupt: str | None = None):
  with zipfile.ZipFile(path, "w") as zf:
    for alphabet, ids in alphabets.items():
      for number, char_id in enumerate(ids, start=1):
        for index in range(20):
          name = f"{top}/{alphabet}/character{number:02d}/{char_id:04d}_{index + 1:02d}.png"
          buffer = io.BytesIO()
          image_utils._pil().fromarray(drawing(char_id, index)).convert("1").save(buffer, "PNG")
          data = buffer.getvalue() if name != corrupt else b"\x89PNG\r\n\x1a\n garbage"
          zf.writestr(name, data)


def make_zip_dir(root: Path, corrupt: str | None = None) -> Path:
  root.mkdir(parents=True, exist_ok=True)
  for key, content in [
    ("train", BACKGROUND),
    ("eval", EVALUATION),
    ("small1", SMALL1),
    ("small2", SMALL2),
  ]:
    filename = omniglot.ZIP_FILES[key]
    write_zip(root / filename, filename[: -len(".zip")], content, corrupt)
  return root


def expected_character(char_id: int, size: int) -> np.ndarray:
  """`[20, size, size]` uint8 as the loader should make it: resized, ink = 255."""
  gray = np.stack([drawing(char_id, i).astype(np.uint8) * 255 for i in range(20)])
  return 255 - image_utils.resize(gray, size)


def same_drawings(a: np.ndarray, b: np.ndarray) -> bool:
  """Whether two `[20, ...]` stacks hold the same drawings in any order."""
  return sorted(x.tobytes() for x in a) == sorted(x.tobytes() for x in b)


@pytest.fixture(scope="module")
def zip_dir(tmp_path_factory):
  return make_zip_dir(tmp_path_factory.mktemp("zips"))


@pytest.fixture(scope="module")
def prepared(zip_dir, tmp_path_factory):
  """A data_dir where TFDS prepared the fixture offline and the 28px cache was written."""
  if not HAS_TF:
    pytest.skip("TensorFlow is not installed (pip install '.[images]'); TFDS can't prepare")
  data_dir = tmp_path_factory.mktemp("tfds")
  with pytest.warns(UserWarning, match="full Omniglot"):
    splits = omniglot.load_omniglot(
      str(data_dir), zip_dir=str(zip_dir), vinyals_sizes=(5, 2), image_size=28
    )
  return data_dir, splits


def fake_characters(num: int = 1623, background: int = 964) -> omniglot.Characters:
  alphabets = np.asarray([f"a{i // 20:02d}" for i in range(num)])
  images = np.arange(num, dtype=np.int64)[:, None, None, None] % 251 * np.ones((1, 20, 2, 2))
  return omniglot.Characters(
    images=images.astype(np.uint8),
    labels=np.arange(num),
    alphabets=alphabets,
    background=np.arange(num) < background,
  )


# --- TFDS offline preparation on the fixture -------------------------------------------------


@needs_tf
def test_prepares_offline_and_loads_vinyals_splits(prepared):
  data_dir, splits = prepared
  assert sorted(splits) == ["test", "train", "val"]
  # 9 characters: 5 train, 2 val, 2 test; each rotation a class.
  assert {k: v.shape for k, v in splits.items()} == {
    "train": (20, 20, 28, 28),
    "val": (8, 20, 28, 28),
    "test": (8, 20, 28, 28),
  }
  assert all(v.dtype == np.uint8 for v in splits.values())
  info = (data_dir / "omniglot" / "3.0.0" / "dataset_info.json").read_text()
  for split, count in [("train", 100), ("test", 80), ("small1", 40), ("small2", 20)]:
    assert re.search(
      rf'"name": "{split}",\s*"numBytes": "\d+",\s*"shardLengths": \[\s*"{count}"', info
    )
  assert not [p for p in data_dir.iterdir() if p.name.startswith("omniglot-extract-")]


@needs_tf
def test_pixels_polarity_and_rotations(prepared):
  data_dir, _ = prepared
  chars = omniglot.load_characters(str(data_dir))
  np.testing.assert_array_equal(chars.labels, np.arange(9))
  assert chars.background.tolist() == [True] * 5 + [False] * 4
  assert chars.alphabets.tolist()[:4] == ["Alpha_(test)"] * 3 + ["Beta"]
  for row, char_id in enumerate(range(1, 10)):
    assert same_drawings(chars.images[row], expected_character(char_id, 28))
  # Ink is high: most pixels are background (0).
  assert np.mean(chars.images == 0) > 0.5
  rotated = omniglot.with_rotations(chars.images[:2])
  for r in range(4):
    np.testing.assert_array_equal(rotated[r], np.rot90(chars.images[0], r, axes=(-2, -1)))
  np.testing.assert_array_equal(rotated[4], chars.images[1])


@needs_tf
def test_lake_split_and_other_sizes_reuse_tfds(prepared, zip_dir):
  data_dir, _ = prepared
  lake = omniglot.load_omniglot(str(data_dir), split_protocol="lake")
  assert {k: v.shape for k, v in lake.items()} == {
    "train": (5, 20, 28, 28),
    "test": (4, 20, 28, 28),
  }
  # A new image size is a new cache entry from the prepared TFDS data (zips not needed).
  big = omniglot.load_omniglot(str(data_dir), split_protocol="lake", image_size=105)
  assert big["train"].shape == (5, 20, 105, 105)
  assert same_drawings(big["test"][0], expected_character(6, 105))
  held = omniglot.load_omniglot(str(data_dir), split_protocol="lake", lake_val_alphabets=1)
  assert sorted(held) == ["test", "train", "val"]
  assert len(held["train"]) + len(held["val"]) == 5
  assert len(held["val"]) in (2, 3)  # one of the two background alphabets


@needs_tf
def test_cached_load_does_not_import_tensorflow(prepared):
  data_dir, _ = prepared
  cache = list((data_dir / omniglot.CACHE_FOLDER).glob("*.npz"))
  assert [p.name for p in cache if "28px" in p.name] == [
    "omniglot-3.0.0-28px-lanczos-ink255-v1.npz"
  ]
  code = (
    "import sys; from metalearn.data import omniglot; "
    f"s = omniglot.load_omniglot({str(data_dir)!r}, zip_dir='/nonexistent', vinyals_sizes=(5, 2)); "
    "print(s['train'].shape, 'tensorflow' in sys.modules, 'tensorflow_datasets' in sys.modules)"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    check=True,
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": str(REPO)},
  )
  assert out.stdout.split() == ["(20,", "20,", "28,", "28)", "False", "False"]


@needs_tf
def test_unreadable_cache_is_rebuilt(prepared, tmp_path):
  data_dir, splits = prepared
  cache = data_dir / omniglot.CACHE_FOLDER / "omniglot-3.0.0-28px-lanczos-ink255-v1.npz"
  good = cache.read_bytes()
  try:
    cache.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable Omniglot cache"):
      again = omniglot.load_omniglot(str(data_dir), vinyals_sizes=(5, 2))
    np.testing.assert_array_equal(again["train"], splits["train"])
  finally:
    cache.write_bytes(good)


# --- Bad folders (no TensorFlow needed: checked before it is imported) ------------------------


def test_missing_folder_names_env_var(tmp_path, monkeypatch):
  monkeypatch.setenv(omniglot.ENV_VAR, str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match=f"nowhere.*does not exist.*{omniglot.ENV_VAR}"):
    omniglot.load_omniglot(str(tmp_path / "data"))


def test_preparing_without_tensorflow_says_what_to_install(tmp_path, zip_dir, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now fails
  with pytest.raises(ImportError, match=r"pip install 'metalearn\[images\]'"):
    omniglot.load_omniglot(str(tmp_path / "data"), zip_dir=str(zip_dir))


def test_missing_zip_is_named(tmp_path, zip_dir):
  partial = tmp_path / "partial"
  partial.mkdir()
  (partial / "images_background.zip").write_bytes((zip_dir / "images_background.zip").read_bytes())
  with pytest.raises(
    FileNotFoundError, match=r"lacks images_evaluation\.zip, images_background_sm"
  ):
    omniglot.load_omniglot(str(tmp_path / "data"), zip_dir=str(partial))


def test_corrupted_zip_is_named(tmp_path, zip_dir):
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in omniglot.ZIP_FILES.values():
    (bad / name).write_bytes((zip_dir / name).read_bytes())
  data = bytearray((bad / "images_evaluation.zip").read_bytes())
  (bad / "images_evaluation.zip").write_bytes(bytes(data[: len(data) // 2]))
  with pytest.raises(ValueError, match=r"images_evaluation\.zip is not a readable zip"):
    omniglot.check_zip_dir(str(bad))
  # A damaged member (bytes flipped inside the compressed data) is named too.
  data[200:260] = bytes(60)
  (bad / "images_evaluation.zip").write_bytes(bytes(data))
  with pytest.raises(ValueError, match=r"images_evaluation\.zip:images_evaluation/Gamma/"):
    omniglot.check_zip_dir(str(bad))


def test_corrupted_image_is_named(tmp_path):
  member = "images_background/Beta/character02/0005_07.png"
  bad = make_zip_dir(tmp_path / "bad", corrupt=member)
  with pytest.raises(ValueError, match=f"cannot decode image .*images_background.zip:{member}"):
    omniglot.load_omniglot(str(tmp_path / "data"), zip_dir=str(bad))


def test_wrong_layout_and_counts_are_named(tmp_path, zip_dir):
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in omniglot.ZIP_FILES.values():
    (bad / name).write_bytes((zip_dir / name).read_bytes())
  write_zip(bad / "images_background_small2.zip", "images_background_small2", {"Beta": [4]})
  with zipfile.ZipFile(bad / "images_background_small2.zip", "a") as zf:
    zf.writestr("images_background_small2/Beta/character01/README.txt", "x")
  with pytest.raises(ValueError, match=r"README\.txt does not follow the Omniglot layout"):
    omniglot.check_zip_dir(str(bad))
  with zipfile.ZipFile(bad / "images_background_small2.zip", "w") as zf:
    buffer = io.BytesIO()
    image_utils._pil().fromarray(drawing(4, 0)).convert("1").save(buffer, "PNG")
    zf.writestr("images_background_small2/Beta/character01/0004_01.png", buffer.getvalue())
  with pytest.raises(ValueError, match="Beta/character01 holds 1 drawings, expected 20"):
    omniglot.check_zip_dir(str(bad))


# --- Split protocols (no data needed) -----------------------------------------------------------


def test_vinyals_split_sizes_disjoint_and_pinned():
  chars = fake_characters()
  rows = omniglot.split_characters(chars, "vinyals")
  assert {k: len(v) for k, v in rows.items()} == {"train": 1100, "val": 100, "test": 423}
  everything = np.concatenate(list(rows.values()))
  assert len(np.unique(everything)) == 1623
  # The documented ordering, np.random.default_rng(0).permutation(1623), pinned (numpy does
  # not promise stable streams across versions; a change of split must show up here).
  order = omniglot.vinyals_order()
  assert order[:5].tolist() == [1229, 854, 493, 864, 898]
  assert order[1100:1103].tolist() == [1590, 1386, 472]  # first validation characters
  assert order[1200:1203].tolist() == [0, 1595, 65]  # first test characters
  # Alphabets are mixed across splits in this protocol.
  assert set(chars.alphabets[rows["train"]]) & set(chars.alphabets[rows["test"]])
  other = omniglot.split_characters(chars, "vinyals", seed=1)
  assert not np.array_equal(other["test"], rows["test"])


def test_lake_split_is_background_vs_evaluation():
  chars = fake_characters()
  rows = omniglot.split_characters(chars, "lake")
  np.testing.assert_array_equal(rows["train"], np.arange(964))
  np.testing.assert_array_equal(rows["test"], np.arange(964, 1623))
  held = omniglot.split_characters(chars, "lake", lake_val_alphabets=3)
  assert len(np.unique(chars.alphabets[held["val"]])) == 3
  assert not set(chars.alphabets[held["val"]]) & set(chars.alphabets[held["train"]])
  assert len(held["train"]) + len(held["val"]) == 964


def test_split_arguments_are_checked():
  chars = fake_characters(30, 20)
  with pytest.raises(ValueError, match="split_protocol must be one of"):
    omniglot.split_characters(chars, "snell")
  with pytest.raises(ValueError, match="vinyals_sizes"):
    omniglot.split_characters(chars, "vinyals", vinyals_sizes=(25, 5))
  with pytest.raises(ValueError, match="lake_val_alphabets"):
    omniglot.split_characters(chars, "lake", lake_val_alphabets=1)  # only one background alphabet
  with pytest.raises(ValueError, match="split_protocol"):
    omniglot.load_omniglot("/nonexistent", split_protocol="snell")
  with pytest.raises(ValueError, match="image_size"):
    omniglot.load_omniglot("/nonexistent", image_size=0)


def test_rotation_classes_of_each_split_are_disjoint():
  chars = fake_characters(40, 25)
  rows = omniglot.split_characters(chars, "vinyals", vinyals_sizes=(20, 8))
  assert not set(rows["train"]) & set(rows["val"]) | set(rows["train"]) & set(rows["test"])
  assert not set(rows["val"]) & set(rows["test"])
  rotated = omniglot.with_rotations(chars.images[rows["test"]])
  assert rotated.shape == (4 * len(rows["test"]), 20, 2, 2)


# --- The real data (when present) ----------------------------------------------------------------


def real_zip_dir() -> Path | None:
  for candidate in (os.environ.get(omniglot.ENV_VAR), REPO / ".." / "shared" / "data" / "omniglot"):
    if candidate and (Path(candidate) / "images_background.zip").is_file():
      return Path(candidate)
  return None


needs_real = pytest.mark.skipif(
  real_zip_dir() is None,
  reason=f"real Omniglot zips not found (set {omniglot.ENV_VAR} or ../shared/data/omniglot)",
)


@needs_real
def test_real_zips_have_the_published_counts():
  member = re.compile(r"^images_\w+/([^/]+)/(character\d+)/(\d{4})_(\d{2})\.png$")
  totals = {}
  for key, expected in [("train", (30, 964)), ("eval", (20, 659))]:
    with zipfile.ZipFile(real_zip_dir() / omniglot.ZIP_FILES[key]) as zf:
      found = [member.match(n).groups() for n in zf.namelist() if n.endswith(".png")]
    drawings = collections.Counter((a, c) for a, c, _, _ in found)
    assert (len({a for a, *_ in found}), len(drawings)) == expected
    assert set(drawings.values()) == {20}
    totals[key] = sorted({int(i) for *_, i, _ in found})
  assert totals["train"] == list(range(1, 965))
  assert totals["eval"] == list(range(965, 1624))


@needs_real
@needs_tf
@pytest.mark.skipif(
  os.environ.get("METALEARN_TEST_REAL_OMNIGLOT") != "1",
  reason="full TFDS preparation of the real data takes 1-3 minutes; "
  "set METALEARN_TEST_REAL_OMNIGLOT=1",
)
def test_real_data_through_tfds(tmp_path):
  splits = omniglot.load_omniglot(str(tmp_path), zip_dir=str(real_zip_dir()))
  assert {k: v.shape for k, v in splits.items()} == {
    "train": (4400, 20, 28, 28),
    "val": (400, 20, 28, 28),
    "test": (1692, 20, 28, 28),
  }
  lake = omniglot.load_omniglot(str(tmp_path), split_protocol="lake")
  assert {k: v.shape[0] for k, v in lake.items()} == {"train": 964, "test": 659}


def test_resize_matches_pillow_lanczos():
  Image = image_utils._pil()
  rng = np.random.default_rng(0)
  strokes = (rng.random((40, 105, 105)) > 0.85).astype(np.uint8) * 255
  for size in (28, 105, 140):
    ours = image_utils.resize(strokes, size).astype(int)
    pil = np.stack(
      [
        np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.LANCZOS))
        for x in strokes
      ]
    )
    assert ours.shape == (40, size, size)
    assert np.abs(ours - pil).max() <= 1 and np.mean(ours != pil) < 1e-3
