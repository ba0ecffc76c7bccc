r"""Classifies a folder of images with a trained few-shot run: adapt on examples, then predict.

  python -m experiments.predict --workdir=runs/protonet_omniglot \
      --support_dir=my_support --query_dir=my_queries [--output_dir=out]

`--support_dir` holds one subfolder per class (its name is the class name) with
a few labelled images each; `--query_dir` holds the images to classify. The run
in `--workdir` (written by `experiments.meta_train` on Omniglot) gives the
method and its settings (`config.json`) and the meta-parameters (the newest
checkpoint). The learner adapts on the support images through its generic
`adapt` (prototypes, attention keys, class features or inner gradient steps,
whatever the method does) and scores the query images with `predict`, so no
code here is specific to a method.

Images are read as they look (`metalearn.data.images.read_images`): upright by
their EXIF orientation, transparent parts (RGBA, LA, palettes with a
transparent entry) over white paper, colour as luma, 16-bit grayscale scaled
to 8 bits. They are then preprocessed as the training data were
(`metalearn.data.omniglot`): grayscale, resized to 28x28 with antialiased
Lanczos-3 resampling, inverted (ink = 1.0, background = 0.0; the images are
taken to be dark strokes on a light background like the Omniglot files,
`--noinvert` for light on dark) and scaled to [0, 1].

Files that are not images (by extension: .png, .jpg, .jpeg, .bmp, .gif,
.webp) are treated by where they are. Hidden files (`.DS_Store`, macOS `._*`)
are ignored everywhere. In `--query_dir`, other files and subfolders are
skipped and each is named on stderr (`skipped <path>: <why>`): no class
depends on them, and the CSV lists the files it classified. In a class folder of
`--support_dir`, any other file or subfolder is refused with an error naming
it: skipping it would silently leave the class with fewer examples than the
user gave it (a photo saved as .heic, a subfolder of more examples). Files
directly in `--support_dir`, beside the class folders, belong to no class and
are skipped and named. An image file that cannot be decoded is an error naming
the file, wherever it is.

`--output_dir` is checked before anything is read (a file in its place fails
at once, not after the model ran); it is created when the CSV is written.

Output: `<output_dir>/predictions.csv` with the header
`file,predicted_class,score,entropy` and one row per query image (in sorted
file-name order), and a summary on the terminal. The score is the softmax
probability of the predicted class over the support classes; for Relation
Networks, whose outputs are per-class relation scores in (0, 1) trained by
regression, it is the relation score itself. The entropy is that of the
query's class distribution divided by log(classes), in [0, 1]: 0 when one
class takes all the probability, 1 when the image favours no class. The
distribution is the softmax of the outputs; for Relation Networks it is the
relation scores divided by their sum (uniform when they are all 0), so that an
image related to no class, or to every class alike, gets entropy near 1. A
softmax score near 1 says only which support class is nearest, not that the
image resembles any of them (noise can score 0.999); a high entropy flags
queries that do not clearly resemble one class more than the others. Neither
is a calibrated out-of-distribution test: an embedding that is sharp on
everything gives low entropy to noise too.

Ways and shots: metric learners (ProtoNets, Matching, Relation) take any
number of support classes (at least 2) and any number of images per class;
gradient-based methods (MAML family, Reptile, iMAML, pretrain) have a head with
the run's `ways` outputs and need exactly that many classes. Gradient-based
methods adapt with the run's `eval_inner_steps` inner steps (those behind
`accuracy` in eval.json) unless `--inner_steps` says otherwise.

Each query is scored on its own (inductive, the default): Conv4 and the
Relation Network normalise every batch with its own statistics
(`metalearn/models/conv4.py`), so the learner's predictor is called, for each
query, on the batch made of the support images and that one query, and the
query's row is kept (`score_each`). A query's prediction then depends on the
support set and on itself only, not on which other images are in
`--query_dir`. `--transductive` scores all query images as one batch instead,
as training and the papers' evaluations do (`experiments.evaluate`'s default);
then a query's prediction depends on the other query images. On held-out
Omniglot episodes the two gave accuracies within 0.8 points of each other
(ProtoNets and Matching Networks), while scoring each query as a batch of one
image alone lost 26 to 59 points
(docs/omniglot.md, "Predictions that do not depend on the other queries").

The flags are defined only when this file runs as the binary, so that the
library functions below can be imported next to `experiments.meta_train`,
which defines `--workdir` too.
"""

from __future__ import annotations

import collections
import csv
import os
import sys
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from experiments import train
from metalearn import episodes as ep
from metalearn.data import images as image_utils

IMAGE_SIZE = train.IMAGE_SIZE  # the size Omniglot is loaded at for training
CSV_NAME = "predictions.csv"
CSV_HEADER = ("file", "predicted_class", "score", "entropy")
# Methods whose `predict` outputs are scores in (0, 1) reported as they are (not softmaxed).


SCORINGS = ("with_support", "batch", "alone")


def score_each(
  predictor: Callable[[jax.Array], jax.Array], support_x: jax.Array, x: jax.Array
) -> jax.Array:
  """Outputs `[m, ways]` of each query `x[i]` scored as row n of `predictor([support_x; x[i]])`.

  `support_x [n, ...]`, `x [m, ...]`. A model that normalises with its batch's
  statistics then sees the support images beside each query, as in training,
  and no other query: row i depends on `support_x` and `x[i]` alone.
  """

  def one(xi):
    return predictor(jnp.concatenate([support_x, xi[None]], axis=0))[-1]

  return jax.lax.map(one, x)


def scored_adapt(adapt: Callable[..., Callable], scoring: str) -> Callable[..., Callable]:
  """`adapt` whose predictors score the queries as `scoring` says.

  `"batch"`: all queries as one batch (transductive; the learner's own
  predictor). `"with_support"`: each query beside the support set
  (`score_each`). `"alone"`: each query as a batch of one image.

  Raises:
    ValueError: for another `scoring`.
  """
  if scoring not in SCORINGS:
    raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
  if scoring == "batch":
    return adapt

  def wrapped(theta, support, key):
    predictor = adapt(theta, support, key)
    if scoring == "alone":
      return lambda x: jax.lax.map(lambda xi: predictor(xi[None])[0], x)
    return lambda x: score_each(predictor, support.x, x)

  return wrapped


class Support(NamedTuple):
  """Labelled images: `x [n, s, s, 1]` float32, `y [n]` int32 (index into `classes`)."""

  x: np.ndarray
  y: np.ndarray
  classes: list[str]
  shots: dict[str, int]
  skipped: list[str]  # "<path>: <why>" for the files beside the class folders


class Prediction(NamedTuple):
  """What `predict` returns: one entry of `files`, `predicted`, `scores` per query image."""

  method: str
  train_ways: int
  train_shots: int
  inner_steps: int | None  # None for methods without inner steps
  classes: list[str]
  shots: dict[str, int]
  files: list[str]
  predicted: list[str]
  scores: np.ndarray  # [m] float
  entropy: np.ndarray  # [m] float in [0, 1]: normalised entropy of `probabilities`
  probabilities: np.ndarray  # [m, ways] float, rows sum to 1 (see `class_probabilities`)
  skipped: list[str]  # "<path>: <why>" for each file left out of support or queries
  transductive: bool = False  # True: the queries were scored as one batch


def read_images(paths: list[str], *, invert: bool = True) -> np.ndarray:
  """Reads image files as the training data: `[n, 28, 28, 1]` float32 in [0, 1].

  `metalearn.data.images.read_images` at the run's image size (see there).

  Raises:
    ValueError: naming the file that cannot be read or decoded.
  """
  return image_utils.read_images(paths, image_size=IMAGE_SIZE, invert=invert)


def load_support(support_dir: str, *, invert: bool = True) -> Support:
  """Reads `support_dir/<class>/<image>`: classes are the subfolders in sorted order.

  Hidden files are ignored. Every other entry of a class folder must be an
  image file: a class must not silently lose an example. Files directly in
  `support_dir` belong to no class; they are left out and listed in
  `Support.skipped`.

  Raises:
    FileNotFoundError: `support_dir` does not exist.
    ValueError: it has no class subfolders, a class folder holds no image or
      something other than image files, or an image cannot be read (each named).
  """
  if not os.path.isdir(support_dir):
    raise FileNotFoundError(f"--support_dir={support_dir}: no such folder")
  listing = image_utils.list_images(support_dir)
  loose, classes = listing.images, listing.folders
  skipped = [f"{os.path.join(support_dir, name)}: {why}" for name, why in listing.skipped]
  skipped += [
    f"{os.path.join(support_dir, name)}: not in a class folder (support images go in "
    "support_dir/<class>/)"
    for name in loose
  ]
  if not classes:
    found = f" (it holds {len(loose)} image files directly)" if loose else ""
    raise ValueError(
      f"--support_dir={support_dir} has no subfolders{found}; it must hold one subfolder of "
      "images per class, support_dir/<class>/<image>"
    )
  paths, labels, shots = [], [], {}
  for label, name in enumerate(classes):
    folder = os.path.join(support_dir, name)
    files, subfolders, others = image_utils.list_images(folder)
    stray = others + [(f, "a folder (images in it would not be read)") for f in subfolders]
    if stray:
      what, why = stray[0]
      more = f" ({len(stray) - 1} more such entries)" if len(stray) > 1 else ""
      raise ValueError(
        f"{os.path.join(folder, what)}: {why}{more}; the class folders of --support_dir must "
        "hold only images (a class would silently lose an example): convert or remove it"
      )
    if not files:
      raise ValueError(
        f"class folder {folder} holds no images ({', '.join(image_utils.IMAGE_EXTENSIONS)}); "
        "every class needs at least one"
      )
    paths += [os.path.join(folder, f) for f in files]
    labels += [label] * len(files)
    shots[name] = len(files)
  x = read_images(paths, invert=invert)
  return Support(x, np.asarray(labels, np.int32), classes, shots, skipped)


def load_queries(query_dir: str, *, invert: bool = True) -> tuple[np.ndarray, list[str], list[str]]:
  """Reads the images directly in `query_dir` (sorted by name).

  Hidden files are ignored; other files that are not images, and subfolders,
  are left out and listed.

  Returns:
    `(x [m, 28, 28, 1], file names, skipped)`, `skipped` holding
    `"<path>: <why>"` for each entry left out.

  Raises:
    FileNotFoundError: `query_dir` does not exist.
    ValueError: it holds no image, or an image cannot be read (named).
  """
  if not os.path.isdir(query_dir):
    raise FileNotFoundError(f"--query_dir={query_dir}: no such folder")
  files, subfolders, others = image_utils.list_images(query_dir)
  if not files:
    where = f" (only subfolders: {', '.join(subfolders[:5])})" if subfolders else ""
    raise ValueError(
      f"--query_dir={query_dir} holds no images ({', '.join(image_utils.IMAGE_EXTENSIONS)})"
      f"{where}; put the images to classify directly in it"
    )
  skipped = others + [
    (f, "a folder (only the images directly in --query_dir are read)") for f in subfolders
  ]
  skipped = [f"{os.path.join(query_dir, f)}: {why}" for f, why in sorted(skipped)]
  x = read_images([os.path.join(query_dir, f) for f in files], invert=invert)
  return x, files, skipped


def check_output_dir(output_dir: str) -> None:
  """Checks, before anything runs, that `<output_dir>/predictions.csv` can be written.

  The folder need not exist (it is created when writing); the nearest part of
  the path that exists must be a writable folder.

  Raises:
    ValueError: one line, `--output_dir=<path>: <why>`.
  """
  where = f"--output_dir={output_dir}"
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ValueError(f"{where}: exists and is not a folder")
  target = os.path.join(output_dir, CSV_NAME)
  if os.path.isdir(target):
    raise ValueError(f"{where}: {target} is a folder, so the CSV cannot be written there")
  existing = os.path.normpath(output_dir)  # the nearest part of the path that exists
  while existing and not os.path.exists(existing):
    existing = os.path.dirname(existing)
  existing = existing or os.curdir
  if not os.path.isdir(existing):
    raise ValueError(f"{where}: {existing} is a file, not a folder")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"{where}: {existing} is not writable")


def class_probabilities(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The class distribution, score and normalised entropy of each query.

  Args:
    outputs: `[m, ways]` logits, what every classifier's adapted predictor
      gives (Relation Networks: the logarithms of the relation scores, whose
      softmax is the scores divided by their sum).

  Returns:
    `(probabilities [m, ways], scores [m], entropy [m])`: the softmax of the
    logits; the probability of the arg-max class; and `-sum(p log p) /
    log(ways)` in [0, 1] (0 for a one-hot distribution, 1 for the uniform one).
  """
  outputs = np.asarray(outputs, np.float64)
  ways = outputs.shape[-1]
  best = np.argmax(outputs, axis=-1)
  rows = np.arange(len(best))
  probs = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
  probs /= probs.sum(axis=-1, keepdims=True)
  scores = probs[rows, best]
  logs = np.log(np.where(probs > 0, probs, 1.0))  # 0 log 0 = 0
  entropy = -np.sum(probs * logs, axis=-1) / np.log(ways) if ways > 1 else np.zeros(len(best))
  return probs, scores, np.clip(entropy, 0.0, 1.0)


def predict(
  workdir: str,
  support_dir: str,
  query_dir: str,
  *,
  inner_steps: int | None = None,
  invert: bool = True,
  seed: int = 0,
  transductive: bool = False,
) -> Prediction:
  """Adapts the run's learner on the support images and classifies the query images.

  Args:
    workdir: a run folder (config.json and checkpoints/) of an Omniglot run.
    support_dir: `support_dir/<class>/<image>`, one subfolder per class.
    query_dir: images to classify.
    inner_steps: inner steps of gradient-based methods (default: the run's
      `eval_inner_steps`); ignored by metric learners.
    invert: invert gray levels as for Omniglot (dark strokes on light images).
    seed: the PRNG key given to `adapt` (the shipped methods do not use it).
    transductive: score all query images as one batch (their predictions then
      depend on each other); False: each beside the support set (`score_each`).

  Returns:
    A `Prediction`, rows in sorted query file-name order.

  Raises:
    FileNotFoundError, ValueError: one line naming the flag, file or folder.
  """
  config = train.load_config(workdir)
  if config.get("task") != "omniglot":
    raise ValueError(
      f"{os.path.join(workdir, 'config.json')}: the run's task is {config.get('task')!r}; "
      "predict classifies images and needs a run with task 'omniglot'"
    )
  method, train_ways = config.method, config.ways
  support = load_support(support_dir, invert=invert)
  query_x, files, skipped = load_queries(query_dir, invert=invert)
  ways = len(support.classes)
  metric = train.changes_ways(config)  # a metric learner: any number of classes
  if metric and ways < 2:
    raise ValueError(
      f"--support_dir={support_dir} has {ways} class folder ({support.classes[0]}); "
      f"{method} needs at least 2 classes"
    )
  if not metric and ways != train_ways:
    raise ValueError(
      f"--support_dir={support_dir} has {ways} class folders, but the {method} run in "
      f"{workdir} was trained {train_ways}-way and its classifier head has {train_ways} "
      f"outputs: give exactly {train_ways} class folders"
    )
  if inner_steps is not None and inner_steps < 0:
    raise ValueError(f"--inner_steps={inner_steps}: must be >= 0")
  steps = None
  if train.has_inner_steps(config):
    steps = config.eval_inner_steps if inner_steps is None else inner_steps

  _, _, theta = train.load_run(workdir)
  config.ways = ways  # metric learners: the same theta, N-way scoring
  learner = train.build_learner(config, inner_steps=steps)

  adapt = scored_adapt(learner.adapt, "batch" if transductive else "with_support")

  def classify(theta, support_split, x, key):
    return adapt(theta, support_split, key)(x)

  outputs = jax.jit(classify)(
    theta, ep.make_split(support.x, support.y), query_x, jax.random.PRNGKey(seed)
  )
  outputs = np.asarray(outputs, np.float64)
  if not np.all(np.isfinite(outputs)):
    raise ValueError(f"the {method} run in {workdir} gives non-finite outputs on these images")
  probs, scores, entropy = class_probabilities(outputs)
  best = np.argmax(outputs, axis=-1)
  return Prediction(
    method=method,
    train_ways=train_ways,
    train_shots=config.shots,
    inner_steps=steps,
    classes=support.classes,
    shots=support.shots,
    files=files,
    predicted=[support.classes[i] for i in best],
    scores=scores,
    entropy=entropy,
    probabilities=probs,
    skipped=support.skipped + skipped,
    transductive=transductive,
  )


def write_csv(path: str, result: Prediction) -> None:
  """Writes `file,predicted_class,score,entropy` and one row per query image to `path`."""
  tmp = f"{path}.tmp"
  rows = zip(result.files, result.predicted, result.scores, result.entropy, strict=True)
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(CSV_HEADER)
    for name, label, score, entropy in rows:
      writer.writerow([name, label, f"{score:.6f}", f"{entropy:.6f}"])
  os.replace(tmp, path)


def summary(result: Prediction) -> str:
  """A few lines for the terminal: classes, shots, queries, counts per predicted class,
  mean score and entropy, the query of highest entropy, how many entries were skipped."""
  counts = collections.Counter(result.predicted)
  shots = sorted(set(result.shots.values()))
  shot_text = (
    f"{shots[0]} shot{'s' if shots[0] != 1 else ''} each"
    if len(shots) == 1
    else f"{shots[0]}-{shots[-1]} shots per class"
  )
  steps = "" if result.inner_steps is None else f", {result.inner_steps} inner steps"
  lines = [
    f"method: {result.method} (trained {result.train_ways}-way {result.train_shots}-shot{steps})",
    f"support: {len(result.classes)} classes, {shot_text} ({sum(result.shots.values())} images)",
    f"queries: {len(result.files)} images ("
    + ("scored as one batch, transductive)" if result.transductive else "each scored on its own)"),
    "predicted: "
    + ", ".join(f"{name}={counts.get(name, 0)}" for name in result.classes)
    + f" (mean score {float(np.mean(result.scores)):.3f}, "
    f"mean entropy {float(np.mean(result.entropy)):.3f})",
  ]
  worst = int(np.argmax(result.entropy))
  lines.append(f"highest entropy: {result.files[worst]} ({float(result.entropy[worst]):.3f})")
  if result.skipped:
    lines.append(f"skipped: {len(result.skipped)} entries that are not images (named on stderr)")
  return "\n".join(lines)


def define_flags() -> None:
  """Declares the binary's flags (only when run as the binary; see the module docstring)."""
  flags.DEFINE_string("workdir", None, "trained run folder (config.json, checkpoints/)")
  flags.DEFINE_string("support_dir", None, "folder with one subfolder of images per class")
  flags.DEFINE_string("query_dir", None, "folder of images to classify")
  flags.DEFINE_string("output_dir", ".", f"where {CSV_NAME} is written (created if missing)")
  flags.DEFINE_integer(
    "inner_steps", None, "inner steps of gradient-based methods (default: the run's eval steps)"
  )
  flags.DEFINE_boolean(
    "invert", True, "images are dark strokes on a light background, as the Omniglot files"
  )
  flags.DEFINE_boolean(
    "transductive",
    False,
    "score all query images as one batch (as training does; each query's prediction then "
    "depends on the others); default: each query on its own, beside the support images",
  )
  flags.mark_flags_as_required(["workdir", "support_dir", "query_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.ERROR)  # keep orbax quiet (it warns of the read-only restore)
  f = flags.FLAGS
  try:
    check_output_dir(f.output_dir)  # before the model runs, not after
    result = predict(
      f.workdir,
      f.support_dir,
      f.query_dir,
      inner_steps=f.inner_steps,
      invert=f.invert,
      transductive=f.transductive,
    )
    for line in result.skipped:
      print(f"skipped {line}", file=sys.stderr)
    os.makedirs(f.output_dir, exist_ok=True)
    path = os.path.join(f.output_dir, CSV_NAME)
    write_csv(path, result)
  except (OSError, ValueError) as e:  # bad input, or an output folder that cannot be written
    raise SystemExit(f"error: {e}") from None
  print(summary(result))
  print(f"wrote {path}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
