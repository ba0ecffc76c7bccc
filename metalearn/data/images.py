"""Image helpers shared by the image task families: decode, resize, list and read folders.

Everything here is host-side numpy + Pillow (imported lazily, in the `images`
extra). Grayscale uint8 arrays follow what a person sees (0 black, 255 white)
unless a function says otherwise; `read_images` turns files into the float
input the image models take.
"""

from __future__ import annotations

import io
import os
import re
from typing import NamedTuple

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_SIXTEEN_BIT = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # PNG/TIFF 16-bit gray: 0..65535
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # Pillow names the BytesIO it was given


def _pil():
  try:
    from PIL import Image
  except ImportError as e:  # pragma: no cover (pillow comes with matplotlib)
    raise ImportError(
      "image data needs Pillow: pip install 'metalearn[images]' (or pip install pillow)"
    ) from e
  return Image


def _to_gray(image) -> np.ndarray:
  """A loaded PIL image as a person sees it: `[H, W]` uint8 (see `decode_gray`)."""
  Image = _pil()
  from PIL import ImageOps

  image = ImageOps.exif_transpose(image)
  if image.mode in _SIXTEEN_BIT:
    # convert("L") would clip these to 255 (everything above 1/256 of full scale is white).
    levels = np.clip(np.asarray(image, np.float64), 0, 65535) / 257.0
    return np.rint(levels).astype(np.uint8)
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.has_transparency_data:
    # Transparent pixels show the page behind them: composite onto white (convert("L")
    # alone drops alpha, so dark strokes on a transparent, black-valued background vanish).
    rgba = image.convert("RGBA")
    image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
  return np.asarray(image.convert("L"), dtype=np.uint8)


def decode_gray(data: bytes, name: str) -> np.ndarray:
  """Decodes encoded image bytes (PNG, JPEG, ...) to grayscale, as the image looks.

  The EXIF orientation is applied (photos taken sideways stand upright); images
  with an alpha channel or a transparent colour (RGBA, LA, a palette with a
  transparency entry) are composited onto white, so dark strokes on a
  transparent background stay dark strokes; colour becomes luma (ITU-R 601);
  16-bit grayscale (Pillow modes "I;16" and "I", 0..65535) is scaled to
  0..255.

  Args:
    data: the file's bytes.
    name: what to call the file in an error message (its path).

  Returns:
    `[H, W]` uint8, 0 = black, 255 = white.

  Raises:
    ValueError: one line naming `name` when the bytes are not a readable image.
  """
  Image = _pil()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      gray = _to_gray(image)
  except Image.UnidentifiedImageError:
    raise ValueError(f"cannot decode image {name}: not an image file Pillow can read") from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    reason = " ".join(_ADDRESS.sub("the file", str(e)).split())
    raise ValueError(f"cannot decode image {name}: {type(e).__name__}: {reason}") from e
  if gray.size == 0:
    raise ValueError(f"cannot decode image {name}: it has no pixels ({gray.shape})")
  return gray


def read_gray(path: str) -> np.ndarray:
  """Reads and decodes one image file: `[H, W]` uint8 (see `decode_gray`).

  Raises:
    ValueError: one line naming `path` when it cannot be read or decoded.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ValueError(f"cannot read image {path}: {e.strerror or e}") from e
  return decode_gray(data, path)


def load_gray(paths: list[str], image_size: int, *, invert: bool = False) -> np.ndarray:
  """Reads image files, each resized to `image_size x image_size` (see `resize`).

  Args:
    paths: the files, in the order of the output.
    image_size: output height and width.
    invert: store `255 - gray` (dark strokes become high values).

  Returns:
    `[n, image_size, image_size]` uint8.

  Raises:
    ValueError: one line naming the file that cannot be read or decoded.
  """
  out = np.empty((len(paths), image_size, image_size), np.uint8)
  for i, path in enumerate(paths):
    out[i] = resize(read_gray(path)[None], image_size)[0]
  if invert:
    np.subtract(255, out, out=out)
  return out


def read_images(paths: list[str], *, image_size: int, invert: bool = True) -> np.ndarray:
  """Reads image files as the image models take them: `[n, s, s, 1]` float32 in [0, 1].

  Each file is decoded as it looks (`decode_gray`), resized with antialiased
  Lanczos-3 (`resize`), inverted when `invert` (ink = 1.0 for dark strokes on
  a light background, as `metalearn.data.omniglot` stores Omniglot) and divided
  by 255, as `metalearn.data.sampler.EpisodicSampler` does with uint8 images.

  Args:
    paths: the files, in the order of the output.
    image_size: s, the output height and width.
    invert: `1 - gray / 255` instead of `gray / 255`.

  Returns:
    `[n, image_size, image_size, 1]` float32.

  Raises:
    ValueError: one line naming the file that cannot be read or decoded.
  """
  gray = load_gray(paths, image_size, invert=invert)
  return (gray.astype(np.float32) / np.float32(255.0))[..., None]


class Listing(NamedTuple):
  """What a folder holds, each list sorted by name (see `list_images`)."""

  images: list[str]  # file names with an image extension
  folders: list[str]  # subfolder names
  skipped: list[tuple[str, str]]  # (file name, why it is not read)


def list_images(folder: str) -> Listing:
  """Sorts the entries directly in `folder` into image files, subfolders and the rest.

  An image file is one whose extension is in `IMAGE_EXTENSIONS` (any case).
  Hidden entries (names starting with "."), such as `.DS_Store` or the `._*`
  files macOS leaves on shared drives, are neither listed nor reported; any
  other file is returned in `skipped` with the reason, so that callers can say
  what they leave out.

  Args:
    folder: an existing folder.

  Returns:
    A `Listing` of names (not paths).
  """
  images, folders, skipped = [], [], []
  reason = f"not an image (no {', '.join(IMAGE_EXTENSIONS)} extension)"
  for name in sorted(os.listdir(folder)):
    if name.startswith("."):
      continue
    if os.path.isdir(os.path.join(folder, name)):
      folders.append(name)
    elif name.lower().endswith(IMAGE_EXTENSIONS):
      images.append(name)
    else:
      skipped.append((name, reason))
  return Listing(images, folders, skipped)


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

  Classes are the subfolders in sorted order; within a class, the image files
  (`list_images`: hidden files are left out, as are files without an image
  extension) are read in sorted name order, converted to grayscale as they
  look (`decode_gray`) and resized (see `resize`). The result feeds
  `metalearn.data.sampler.EpisodicSampler` directly.

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
  for name in list_images(root).folders:
    folder = os.path.join(root, name)
    found = list_images(folder).images
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
    out[c] = load_gray(paths[:count], image_size, invert=invert)
  return out, list(files)
