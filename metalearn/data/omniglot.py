r"""Omniglot (Lake et al. 2015) through tensorflow-datasets, as uint8 arrays per split.

Omniglot holds 1,623 handwritten characters from 50 alphabets, 20 drawings of
each, as 105x105 1-bit PNGs: the "background" set (30 alphabets, 964
characters, authors' ids 1-964) and the "evaluation" set (20 alphabets, 659
characters, ids 965-1623).

Where the data comes from. `load_omniglot` goes through the tensorflow-datasets
builder `omniglot` (version 3.0.0; splits train = background, test =
evaluation, small1, small2; `label` = authors' character id - 1):

- With internet access and no local folder set, TFDS downloads the authors'
  zips and prepares the dataset in `data_dir` as usual.
- Offline, put the authors' four zips (`images_background.zip`,
  `images_evaluation.zip`, `images_background_small1.zip`,
  `images_background_small2.zip` from
  https://github.com/brendenlake/omniglot/tree/master/python) in a folder and
  pass it as `zip_dir` or set the environment variable `METALEARN_OMNIGLOT_DIR`.
  A subclass of the TFDS builder then extracts those local files instead of
  downloading (without checking them against TFDS's registered checksums,
  which rebuilt but pixel-identical zips would fail) and prepares the same
  `omniglot/3.0.0` dataset in `data_dir`, without network. The zips are
  checked first (every PNG decoded), so a damaged file is named in the error.

Either way the preparation runs once and needs TensorFlow (`pip install
'metalearn[images]'`). The images are then preprocessed once into an array
cache, `<data_dir>/metalearn_cache/omniglot-<settings>.npz`; later calls read
only that file (about a second, no TensorFlow or TFDS import). `data_dir`
defaults to TFDS's: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.

Preprocessing (as in Vinyals et al. 2016, Finn et al. 2017, Snell et al.
2017): each drawing is converted to grayscale, resized to `image_size` square
with Lanczos-3 antialiased resampling (`metalearn.data.images.resize`, equal to
Pillow's LANCZOS up to one grey level), and inverted, so the arrays hold
**ink = 255, background = 0** (the files themselves are black strokes on
white). Dividing by 255, as `metalearn.data.sampler.EpisodicSampler` does,
gives the usual ink = 1.0, background = 0.0 inputs. Drawings of a character
are kept in TFDS's (deterministic) record order.

Split protocols (`split_protocol`):

- `"vinyals"` (Vinyals et al. 2016; the split of Snell et al. 2017 and Finn
  et al. 2017): the 1,623 characters, ordered by TFDS label (= authors' id - 1,
  background first), are permuted by `np.random.default_rng(seed).permutation`
  (`seed=0` by default); the first 1,100 are "train", the next 100 "val" (the
  1,200 training characters with their validation hold-out) and the remaining
  423 "test". Alphabets are mixed across splits. Each character rotated by 0,
  90, 180 and 270 degrees is a separate class, in every split: 4,400 / 400 /
  1,692 classes.
- `"lake"` (Lake et al. 2015): "train" = the 30 background alphabets (964
  characters), "test" = the 20 evaluation alphabets (659 characters); no
  rotations by default. There is no validation split unless
  `lake_val_alphabets=k` moves k background alphabets (chosen with `seed`)
  from "train" to "val".

Classes of a split are in character order (TFDS label), rotations innermost:
class `4 * i + r` is character `i` of the split rotated by `r * 90` degrees
counterclockwise.

Usage:

  splits = load_omniglot(zip_dir="path/to/omniglot/zips")   # or METALEARN_OMNIGLOT_DIR
  splits["train"].shape   # (4400, 20, 28, 28) uint8

References:
  Lake, Salakhutdinov, Tenenbaum. Human-level concept learning through
  probabilistic program induction. Science 2015.
  Vinyals et al. Matching Networks for One Shot Learning. NeurIPS 2016.
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning. ICML 2017, Sec. 5.2.
  Snell, Swersky, Zemel. Prototypical Networks for Few-shot Learning. NeurIPS 2017.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

from metalearn.data import images as image_utils

ENV_VAR = "METALEARN_OMNIGLOT_DIR"
SOURCE_URL = "https://github.com/brendenlake/omniglot/tree/master/python"
TFDS_NAME = "omniglot"
TFDS_VERSION = "3.0.0"
# The TFDS builder's download keys -> the authors' zip files.
ZIP_FILES = {
  "train": "images_background.zip",
  "eval": "images_evaluation.zip",
  "small1": "images_background_small1.zip",
  "small2": "images_background_small2.zip",
}
# Characters in each zip of the full data set.
NUM_CHARACTERS = {"train": 964, "eval": 659, "small1": 136, "small2": 156}
NUM_DRAWINGS = 20
IMAGE_SIZE = 105
NUM_ALPHABETS = 50
NUM_LABELS = 1623
CACHE_FOLDER = "metalearn_cache"
CACHE_FORMAT = 1  # bump when the preprocessing or the cache layout changes
PROTOCOLS = ("vinyals", "lake")

_HOW_TO_PROVIDE = (
  f"Download the authors' zips ({', '.join(ZIP_FILES.values())}) from {SOURCE_URL} into a "
  f"folder and pass it as zip_dir (the experiment's Omniglot folder flag) or set {ENV_VAR}="
  "<folder>; with internet access and no folder set, tensorflow-datasets downloads them itself."
)
_INSTALL = "pip install 'metalearn[images]'"
_MEMBER = re.compile(r"^(images_[a-z0-9_]+)/([^/]+)/character(\d+)/(\d{4})_(\d{2})\.png$")


class Characters(NamedTuple):
  """All characters of Omniglot, preprocessed (one row per character, by TFDS label).

  Attributes:
    images: `[characters, 20, size, size]` uint8, ink = 255, background = 0.
    labels: `[characters]` int, TFDS label (authors' character id - 1).
    alphabets: `[characters]` str, the alphabet folder name.
    background: `[characters]` bool, True for the background set (TFDS "train").
  """

  images: np.ndarray
  labels: np.ndarray
  alphabets: np.ndarray
  background: np.ndarray


def default_data_dir() -> str:
  """TFDS's default data folder: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`."""
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def resolve_zip_dir(zip_dir: str | None = None) -> str | None:
  """The folder of local zips: `zip_dir` if given, else `$METALEARN_OMNIGLOT_DIR`, else None."""
  if zip_dir is None:
    zip_dir = os.environ.get(ENV_VAR) or None
  return None if zip_dir is None else os.path.expanduser(os.fspath(zip_dir))


def check_zip_dir(zip_dir: str) -> dict[str, int]:
  """Checks a folder of the authors' zips: present, readable, laid out as TFDS expects.

  Every PNG is read and decoded once (a few seconds for the full data), so a
  damaged zip or image is named here rather than deep inside TFDS.

  Args:
    zip_dir: folder holding the four files of `ZIP_FILES`.

  Returns:
    Characters found per zip, keyed like `ZIP_FILES`. A count other than the
    full data set's (`NUM_CHARACTERS`) gives a warning, not an error.

  Raises:
    FileNotFoundError: the folder or one of the zips is missing.
    ValueError: a zip that does not open, a corrupted member, an undecodable
      or wrongly sized image, a path outside the layout
      `images_<set>/<Alphabet>/characterNN/IIII_YY.png`, or a character with
      other than 20 drawings (each message names the file).
  """
  if not os.path.isdir(zip_dir):
    raise FileNotFoundError(f"Omniglot folder {zip_dir!r} does not exist. {_HOW_TO_PROVIDE}")
  missing = [f for f in ZIP_FILES.values() if not os.path.isfile(os.path.join(zip_dir, f))]
  if missing:
    raise FileNotFoundError(
      f"Omniglot folder {zip_dir!r} lacks {', '.join(missing)}. {_HOW_TO_PROVIDE}"
    )
  counts, labels = {}, {}
  for key, filename in ZIP_FILES.items():
    counts[key] = _check_zip(os.path.join(zip_dir, filename), labels)
    if counts[key] != NUM_CHARACTERS[key]:
      warnings.warn(
        f"{os.path.join(zip_dir, filename)} holds {counts[key]} characters; the full Omniglot "
        f"has {NUM_CHARACTERS[key]}. Continuing with what is there.",
        stacklevel=2,
      )
  return counts


def _check_zip(path: str, labels: dict[int, str]) -> int:
  """Checks one zip (see `check_zip_dir`); returns its number of characters."""
  top = os.path.splitext(os.path.basename(path))[0]
  drawings = collections.Counter()
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise ValueError(f"{path} is not a readable zip file ({e}). {_HOW_TO_PROVIDE}") from e
  with archive:
    for info in archive.infolist():
      if info.is_dir():
        continue
      name = f"{path}:{info.filename}"
      match = _MEMBER.match(info.filename)
      if match is None or match.group(1) != top:
        raise ValueError(
          f"{name} does not follow the Omniglot layout {top}/<Alphabet>/characterNN/IIII_YY.png"
        )
      _, alphabet, character, char_id, _ = match.groups()
      label = int(char_id) - 1
      if not 0 <= label < NUM_LABELS:
        raise ValueError(f"{name}: character id {char_id} is outside 0001-{NUM_LABELS}")
      folder = f"{alphabet}/character{character}"
      if labels.setdefault(label, folder) != folder:
        raise ValueError(
          f"{name}: character id {char_id} also appears in {labels[label]}; each id must "
          "belong to one character folder"
        )
      try:
        data = archive.read(info)
      except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise ValueError(f"{name} is corrupted ({e}). {_HOW_TO_PROVIDE}") from e
      image = image_utils.decode_gray(data, name)
      if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{name} is {image.shape}, expected ({IMAGE_SIZE}, {IMAGE_SIZE})")
      drawings[folder] += 1
  if not drawings:
    raise ValueError(f"{path} holds no Omniglot PNG. {_HOW_TO_PROVIDE}")
  for folder, n in sorted(drawings.items()):
    if n != NUM_DRAWINGS:
      raise ValueError(f"{path}:{top}/{folder} holds {n} drawings, expected {NUM_DRAWINGS}")
  if len({folder.split("/")[0] for folder in labels.values()}) > NUM_ALPHABETS:
    raise ValueError(f"{path}: more than {NUM_ALPHABETS} alphabets in the Omniglot zips")
  return len(drawings)


def _import_tfds():
  """Imports TensorFlow (CPU only) and TFDS, or says how to install them."""
  try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
      f"preparing Omniglot needs TensorFlow and tensorflow-datasets ({e}); install them with "
      f"{_INSTALL}. This is needed once: later runs read the array cache."
    ) from e
  with contextlib.suppress(RuntimeError):  # TF already initialised: leave it
    tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerators JAX uses
  return tfds


def _local_builder(tfds, zip_dir: str, data_dir: str):
  """The TFDS `omniglot` builder, reading the authors' zips from `zip_dir`."""
  from tensorflow_datasets.image_classification import omniglot as tfds_omniglot

  class LocalOmniglot(tfds_omniglot.Omniglot, skip_registration=True):
    """Stock `omniglot` (same name, version, features, splits) from local zips."""

    name = TFDS_NAME

    def _split_generators(self, dl_manager):
      dirs = dl_manager.extract({k: os.path.join(zip_dir, f) for k, f in ZIP_FILES.items()})
      # As the stock builder, but a partial folder (tests) gets placeholder names.
      alphabets, labels = set(), {}
      for directory in dirs.values():
        for alphabet, char_id, label, _, _ in tfds_omniglot._walk_omniglot_dir(directory):
          alphabets.add(alphabet)
          labels[label] = f"{alphabet}_{char_id}"
      names = sorted(alphabets)
      names += [f"missing_{i}" for i in range(len(names), NUM_ALPHABETS)]
      self.info.features["alphabet"].names = names
      self.info.features["label"].names = [labels.get(i, f"missing_{i}") for i in range(NUM_LABELS)]
      splits = {"train": "train", "test": "eval", "small1": "small1", "small2": "small2"}
      return [
        tfds.core.SplitGenerator(name=split, gen_kwargs={"directory": dirs[key]})
        for split, key in splits.items()
      ]

  return LocalOmniglot(data_dir=data_dir)


def prepare_tfds(data_dir: str | None = None, *, zip_dir: str | None = None):
  """Prepares the TFDS `omniglot` dataset in `data_dir` (once) and returns its builder.

  Nothing is done when `data_dir` already holds it (however it was prepared).
  Otherwise the zips in `zip_dir` / `$METALEARN_OMNIGLOT_DIR` are checked and
  used offline, or, with neither set, TFDS downloads them.

  Args:
    data_dir: TFDS data folder (default `default_data_dir()`).
    zip_dir: folder of the authors' zips (see the module docstring).

  Returns:
    The prepared `tfds.core.DatasetBuilder`.

  Raises:
    ImportError: TensorFlow or TFDS is missing.
    FileNotFoundError, ValueError: see `check_zip_dir`.
    RuntimeError: the download failed (the message says how to work offline).
  """
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  zip_dir = resolve_zip_dir(zip_dir)
  prepared = os.path.isfile(os.path.join(data_dir, TFDS_NAME, TFDS_VERSION, "dataset_info.json"))
  if not prepared and zip_dir is not None:
    check_zip_dir(zip_dir)  # before importing TensorFlow: a bad folder fails fast
  tfds = _import_tfds()
  stock = tfds.builder(TFDS_NAME, data_dir=data_dir)
  if stock.is_prepared():
    return stock
  if zip_dir is None:
    try:
      stock.download_and_prepare()
    except Exception as e:
      raise RuntimeError(
        f"tensorflow-datasets could not download and prepare Omniglot in {data_dir} "
        f"({type(e).__name__}: {e}). Offline? {_HOW_TO_PROVIDE}"
      ) from e
    return stock
  if prepared:  # a dataset_info.json without valid data: prepare anew from checked zips
    check_zip_dir(zip_dir)
  builder = _local_builder(tfds, zip_dir, data_dir)
  os.makedirs(data_dir, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix="omniglot-extract-", dir=data_dir)
  try:
    builder.download_and_prepare(download_dir=scratch)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return tfds.builder(TFDS_NAME, data_dir=data_dir)


def _read_split(tfds, builder, split: str, image_size: int):
  """Decodes and resizes one TFDS split: `(images [n, s, s] uint8, labels [n], alphabets [n])`."""
  features = builder.info.features
  dataset = builder.as_dataset(
    split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
  )
  images, labels, alphabets = [], [], []
  for batch in tfds.as_numpy(dataset.batch(1024)):
    gray = [
      image_utils.decode_gray(
        data, f"TFDS omniglot {split}: a drawing of character {label + 1:04d}"
      )
      for data, label in zip(batch["image"], batch["label"], strict=True)
    ]
    images.append(image_utils.resize(np.stack(gray), image_size))
    labels.extend(int(label) for label in batch["label"])
    alphabets.extend(features["alphabet"].int2str(int(a)) for a in batch["alphabet"])
  return np.concatenate(images), np.asarray(labels), np.asarray(alphabets)


def _cache_path(data_dir: str, image_size: int) -> str:
  name = f"{TFDS_NAME}-{TFDS_VERSION}-{image_size}px-lanczos-ink255-v{CACHE_FORMAT}.npz"
  return os.path.join(data_dir, CACHE_FOLDER, name)


def _read_cache(path: str, image_size: int) -> Characters | None:
  """Reads the array cache, or None (with a warning when it exists but is unusable)."""
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      chars = Characters(*(f[k] for k in Characters._fields))
  except Exception as e:
    warnings.warn(f"ignoring unreadable Omniglot cache {path} ({e}); rebuilding it", stacklevel=3)
    return None
  n = len(chars.labels)
  if chars.images.shape != (n, NUM_DRAWINGS, image_size, image_size) or any(
    len(a) != n for a in chars
  ):
    warnings.warn(f"ignoring malformed Omniglot cache {path}; rebuilding it", stacklevel=3)
    return None
  return chars


def load_characters(
  data_dir: str | None = None, *, zip_dir: str | None = None, image_size: int = 28
) -> Characters:
  """All Omniglot characters, preprocessed, from the array cache (built on first use).

  Args:
    data_dir: TFDS data folder, which also holds the cache (default
      `default_data_dir()`).
    zip_dir: folder of the authors' zips, used only when the TFDS dataset is
      not yet prepared (default `$METALEARN_OMNIGLOT_DIR`; see the module
      docstring).
    image_size: output height and width (28 in the papers; 105 keeps the
      original resolution).

  Returns:
    `Characters`, rows ordered by TFDS label; `images` is
    `[characters, 20, image_size, image_size]` uint8 with ink = 255.
  """
  if not isinstance(image_size, int | np.integer) or not 1 <= image_size <= IMAGE_SIZE:
    raise ValueError(f"image_size must be an int in [1, {IMAGE_SIZE}], got {image_size!r}")
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  path = _cache_path(data_dir, image_size)
  chars = _read_cache(path, image_size)
  if chars is not None:
    return chars
  builder = prepare_tfds(data_dir, zip_dir=zip_dir)
  tfds = _import_tfds()
  parts = [_read_split(tfds, builder, split, image_size) for split in ("train", "test")]
  images = np.concatenate([p[0] for p in parts])
  labels = np.concatenate([p[1] for p in parts])
  alphabets = np.concatenate([p[2] for p in parts])
  background = np.concatenate([np.full(len(p[1]), s == 0) for s, p in enumerate(parts)])
  order = np.argsort(labels, kind="stable")
  unique, counts = np.unique(labels, return_counts=True)
  if np.any(counts != NUM_DRAWINGS):
    bad = {int(u) + 1: int(c) for u, c in zip(unique, counts, strict=True) if c != NUM_DRAWINGS}
    raise ValueError(
      f"the TFDS omniglot dataset in {data_dir} has characters (authors' ids) with other than "
      f"{NUM_DRAWINGS} drawings: {dict(list(bad.items())[:10])}"
    )
  first = order[::NUM_DRAWINGS]
  chars = Characters(
    images=np.subtract(255, images[order]).reshape(-1, NUM_DRAWINGS, image_size, image_size),
    labels=labels[first],
    alphabets=alphabets[first],
    background=background[first],
  )
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez_compressed(f, **chars._asdict(), settings=json.dumps(_settings(image_size)))
  os.replace(tmp, path)
  return chars


def _settings(image_size: int) -> dict:
  return {
    "tfds": f"{TFDS_NAME}:{TFDS_VERSION}",
    "image_size": image_size,
    "resize": "lanczos",
    "ink": 255,
    "format": CACHE_FORMAT,
  }


def vinyals_order(num_characters: int = NUM_LABELS, seed: int = 0) -> np.ndarray:
  """The seeded ordering of characters behind the Vinyals split: `[num_characters]` rows."""
  return np.random.default_rng(seed).permutation(num_characters)


def split_characters(
  chars: Characters,
  split_protocol: str = "vinyals",
  *,
  seed: int = 0,
  vinyals_sizes: tuple[int, int] = (1100, 100),
  lake_val_alphabets: int = 0,
) -> dict[str, np.ndarray]:
  """Which characters (rows of `chars`) each split holds, per the protocol.

  Args:
    chars: from `load_characters`.
    split_protocol: `"vinyals"` or `"lake"` (see the module docstring).
    seed: seeds the Vinyals ordering and the choice of Lake validation alphabets.
    vinyals_sizes: (train, val) characters of the Vinyals split; the rest is test.
    lake_val_alphabets: background alphabets moved to "val" in the Lake split.

  Returns:
    Split name -> sorted `[characters]` int row indices into `chars`; the splits
    are disjoint.
  """
  n = len(chars.labels)
  if split_protocol == "vinyals":
    num_train, num_val = vinyals_sizes
    if min(num_train, num_val) < 0 or num_train + num_val >= n or num_train == 0:
      raise ValueError(
        f"vinyals_sizes={vinyals_sizes} must leave train, val >= 0 (train > 0) and a test "
        f"split out of {n} characters"
      )
    order = vinyals_order(n, seed)
    bounds = {"train": (0, num_train), "val": (num_train, num_train + num_val)}
    bounds["test"] = (num_train + num_val, n)
    return {k: np.sort(order[a:b]) for k, (a, b) in bounds.items()}
  if split_protocol == "lake":
    train = np.flatnonzero(chars.background)
    out = {"train": train, "test": np.flatnonzero(~chars.background)}
    if lake_val_alphabets:
      names = np.unique(chars.alphabets[train])
      if not 0 < lake_val_alphabets < len(names):
        raise ValueError(
          f"lake_val_alphabets={lake_val_alphabets} must be in [0, {len(names)}) "
          f"(background alphabets)"
        )
      held = np.random.default_rng(seed).permutation(names)[:lake_val_alphabets]
      is_val = np.isin(chars.alphabets[train], held)
      out = {"train": train[~is_val], "val": train[is_val], "test": out["test"]}
    return out
  raise ValueError(f"split_protocol must be one of {PROTOCOLS}, got {split_protocol!r}")


def with_rotations(images: np.ndarray) -> np.ndarray:
  """Each class rotated by 0, 90, 180, 270 degrees as four classes.

  Args:
    images: `[classes, examples, H, W]`.

  Returns:
    `[4 * classes, examples, W, H]` (H = W for Omniglot); class `4 i + r` is
    class `i` rotated `r * 90` degrees counterclockwise.
  """
  rotated = np.stack([np.rot90(images, r, axes=(-2, -1)) for r in range(4)], axis=1)
  return rotated.reshape(-1, *rotated.shape[2:])


def load_omniglot(
  data_dir: str | None = None,
  *,
  zip_dir: str | None = None,
  split_protocol: str = "vinyals",
  image_size: int = 28,
  rotations: bool | None = None,
  seed: int = 0,
  vinyals_sizes: tuple[int, int] = (1100, 100),
  lake_val_alphabets: int = 0,
) -> dict[str, np.ndarray]:
  """Omniglot split into class-indexed arrays for `EpisodicSampler`.

  Args:
    data_dir: TFDS data folder, also holding the array cache (default
      `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
    zip_dir: folder of the authors' zips for offline preparation (default
      `$METALEARN_OMNIGLOT_DIR`; unset: TFDS downloads them). Only read on
      the first call for a `data_dir`.
    split_protocol: `"vinyals"` (train/val/test of 1,100/100/423 characters,
      seeded) or `"lake"` (background/evaluation alphabets as train/test); see
      the module docstring.
    image_size: output height and width.
    rotations: add the 90/180/270 degree rotations as classes (default: True
      for "vinyals", False for "lake").
    seed: seeds the Vinyals ordering / the Lake validation alphabets.
    vinyals_sizes: (train, val) characters of the Vinyals split.
    lake_val_alphabets: background alphabets held out as "val" (Lake split).

  Returns:
    Split name -> `[classes, 20, image_size, image_size]` uint8, ink = 255,
    background = 0. Vinyals (defaults): train 4,400, val 400, test 1,692
    classes. Lake: train 964, test 659 classes.

  Raises:
    FileNotFoundError: the zip folder (or one of its files) is missing.
    ValueError: a damaged zip or image (named), or bad arguments.
    ImportError: the first preparation needs TensorFlow (`metalearn[images]`).
  """
  if split_protocol not in PROTOCOLS:
    raise ValueError(f"split_protocol must be one of {PROTOCOLS}, got {split_protocol!r}")
  chars = load_characters(data_dir, zip_dir=zip_dir, image_size=image_size)
  rows = split_characters(
    chars,
    split_protocol,
    seed=seed,
    vinyals_sizes=vinyals_sizes,
    lake_val_alphabets=lake_val_alphabets,
  )
  if rotations is None:
    rotations = split_protocol == "vinyals"
  out = {}
  for name, index in rows.items():
    images = chars.images[index]
    out[name] = with_rotations(images) if rotations else images
  return out
