"""Image helpers shared by the image task families: decode, resize, load a folder.

Everything here is host-side numpy + Pillow (imported lazily, in the `images`
extra) and returns uint8 arrays. Grayscale arrays follow the files' polarity
(0 black, 255 white) unless a function says otherwise.
"""

from __future__ import annotations

import io
import os

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _pil():
  try:
    from PIL import Image
  except ImportError as e:  # pragma: no cover (pillow comes with matplotlib)
    raise ImportError(
      "image data needs Pillow: pip install 'metalearn[images]' (or pip install pillow)"
    ) from e
  return Image


def decode_gray(data: bytes, name: str) -> np.ndarray:
  """Decodes encoded image bytes (PNG, JPEG, ...) to grayscale.

  Args:
    data: the file's bytes.
    name: what to call the file in an error message (its path).

  Returns:
    `[H, W]` uint8, 0 = black, 255 = white.

  Raises:
    ValueError: naming `name` when the bytes are not a readable image.
  """
  Image = _pil()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      return np.asarray(image.convert("L"), dtype=np.uint8)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"cannot decode image {name}: {type(e).__name__}: {e}") from e


def _lanczos(x: np.ndarray) -> np.ndarray:
  x = np.abs(x)
  return np.where(x < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)


def _resize_weights(size_in: int, size_out: int) -> np.ndarray:
  """`[size_out, size_in]` Lanczos-3 weights, widened by the scale when shrinking (antialiasing).

  The coefficients of Pillow's `Image.resize(..., LANCZOS)` (`precompute_coeffs`
  in its Resample.c), each row normalised to sum 1.
  """
  scale = size_in / size_out
  stretch = max(scale, 1.0)
  support = 3.0 * stretch
  weights = np.zeros((size_out, size_in))
  for i in range(size_out):
    center = (i + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), size_in)
    w = _lanczos((np.arange(lo, hi) - center + 0.5) / stretch)
    weights[i, lo:hi] = w / w.sum()
  return weights.astype(np.float32)


def resize(images: np.ndarray, size: int, *, chunk: int = 1024) -> np.ndarray:
  """Antialiased Lanczos-3 resize of grayscale images to `size x size`, vectorised.

  Two matrix products per chunk of images (width, then height, rounding and
  clipping to uint8 in between as Pillow does), so the result equals Pillow's
  `Image.resize((size, size), Image.LANCZOS)` up to one grey level on rare
  pixels (fixed-point rounding), at a fraction of the cost of a loop over images.

  Args:
    images: `[n, H, W]` uint8.
    size: output height and width.
    chunk: images per matrix product (bounds the float32 scratch memory).

  Returns:
    `[n, size, size]` uint8 (the input itself when it already has that size).
  """
  images = np.asarray(images)
  if images.ndim != 3 or images.dtype != np.uint8:
    raise ValueError(f"images must be [n, H, W] uint8, got {images.shape} {images.dtype}")
  if images.shape[1:] == (size, size):
    return images
  across = _resize_weights(images.shape[2], size).T  # [W, size]
  down = _resize_weights(images.shape[1], size)  # [size, H]
  out = np.empty((images.shape[0], size, size), np.uint8)
  for start in range(0, images.shape[0], chunk):
    block = images[start : start + chunk].astype(np.float32) @ across
    np.clip(np.rint(block, out=block), 0, 255, out=block)
    block = down @ block
    out[start : start + chunk] = np.clip(np.rint(block, out=block), 0, 255)
  return out


def load_image_folder(
  root: str,
  *,
  image_size: int,
  examples_per_class: int | None = None,
  invert: bool = False,
) -> tuple[np.ndarray, list[str]]:
  """Loads a folder of class subfolders, `root/<class>/<image file>`, as one array.

  Classes are the subfolders in sorted order; within a class, files are read
  in sorted name order, converted to grayscale and resized (see `resize`). The
  result feeds `metalearn.data.sampler.EpisodicSampler` directly.

  Args:
    root: the folder.
    image_size: output height and width.
    examples_per_class: keep the first this many images of each class (every
      class must have at least as many); default: every class must hold the
      same number of images.
    invert: store `255 - gray`, so that dark strokes on a light background
      (handwriting) become high values.

  Returns:
    `(images, class_names)`: `[classes, examples, image_size, image_size]` uint8
    and the subfolder name of each class.

  Raises:
    FileNotFoundError: `root` is missing or holds no class folder with images.
    ValueError: classes with too few images, or an unreadable image (named).
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder {root!r} does not exist")
  files = {}
  for name in sorted(os.listdir(root)):
    folder = os.path.join(root, name)
    if os.path.isdir(folder):
      found = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
      if found:
        files[name] = [os.path.join(folder, f) for f in found]
  if not files:
    raise FileNotFoundError(
      f"no class folders with images ({', '.join(IMAGE_EXTENSIONS)}) in {root!r}; "
      "expected root/<class>/<image>"
    )
  counts = {name: len(paths) for name, paths in files.items()}
  count = examples_per_class if examples_per_class is not None else min(counts.values())
  short = {name: n for name, n in counts.items() if n < count}
  if short or (examples_per_class is None and len(set(counts.values())) > 1):
    raise ValueError(
      f"classes in {root!r} must each hold {count if short else 'the same number of'} images "
      f"(pass examples_per_class to keep the first few); counts: {counts}"
    )
  out = np.empty((len(files), count, image_size, image_size), np.uint8)
  for c, paths in enumerate(files.values()):
    gray = []
    for path in paths[:count]:
      with open(path, "rb") as f:
        gray.append(resize(decode_gray(f.read(), path)[None], image_size)[0])
    out[c] = np.stack(gray)
  if invert:
    np.subtract(255, out, out=out)
  return out, list(files)
