"""metalearn/data/images.py: images decode as a person sees them, whatever their file format."""

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from metalearn.data import images

INK = 40  # a dark-grey pencil: not black, so that clipping 16-bit values would show


def strokes(size=105, shape="cross"):
  """`[size, size]` uint8: dark antialiased strokes (INK) on white paper (255), like a scan."""
  big = Image.new("L", (4 * size, 4 * size), 255)
  draw = ImageDraw.Draw(big)
  s, w = 4 * size, size // 3
  if shape == "cross":
    draw.line([(s // 5, s // 5), (4 * s // 5, 4 * s // 5)], fill=INK, width=w)
    draw.line([(s // 5, 4 * s // 5), (4 * s // 5, s // 5)], fill=INK, width=w)
    draw.line([(s // 5, s // 5), (s // 5, s // 2)], fill=INK, width=w)  # not symmetric
  elif shape == "ring":
    draw.ellipse([s // 5, s // 4, 4 * s // 5, 3 * s // 4], outline=INK, width=w)
  elif shape == "ell":
    draw.line([(s // 4, s // 6), (s // 4, 5 * s // 6), (3 * s // 4, 5 * s // 6)], fill=INK, width=w)
  elif shape == "tee":
    draw.line([(s // 6, s // 5), (5 * s // 6, s // 5)], fill=INK, width=w)
    draw.line([(s // 2, s // 5), (s // 2, 5 * s // 6)], fill=INK, width=w)
  else:
    raise AssertionError(shape)
  return np.asarray(big.resize((size, size), Image.LANCZOS))


def _png(image, **kwargs):
  buffer = io.BytesIO()
  image.save(buffer, "PNG", **kwargs)
  return buffer.getvalue()


def variants(shape="cross", size=105):
  """The drawing `strokes(size, shape)` saved as drawing apps, scanners and phones do.

  Returns:
    `{name: encoded bytes}`; each decodes, for a person, to `strokes(size, shape)`
    (drawn at twice the size for "larger").
  """
  gray = strokes(size, shape)
  alpha = 255 - gray  # ink opacity: strokes over a fully transparent background
  black = np.zeros_like(gray)
  rgba = Image.fromarray(np.stack([black, black, black, alpha], -1))
  la = Image.fromarray(np.stack([black, alpha], -1))
  # A palette of grey levels whose index 255, the background, is transparent and black.
  palette = Image.new("P", gray.shape[::-1])
  palette.putpalette([v for i in range(255) for v in (i, i, i)] + [0, 0, 0])
  palette.putdata(np.where(gray == 255, 255, np.minimum(gray, 254)).ravel().tolist())
  rgb = Image.fromarray(np.stack([gray] * 3, -1))
  # Stored turned 90 degrees anticlockwise, with the EXIF orientation (6: turn it 90
  # degrees clockwise to display) that a phone writes for the photo it took sideways.
  exif = Image.Exif()
  exif[0x0112] = 6
  turned = Image.fromarray(np.rot90(gray))
  jpeg = io.BytesIO()
  turned.save(jpeg, "JPEG", quality=95, exif=exif)
  return {
    "gray": _png(Image.fromarray(gray)),
    "rgba on transparent": _png(rgba),
    "la on transparent": _png(la),
    "palette with transparency": _png(palette, transparency=255),
    "rgb": _png(rgb),
    "16-bit": _png(Image.fromarray(gray.astype(np.uint16) * 257)),
    "exif-rotated png": _png(turned, exif=exif),
    "exif-rotated jpeg": jpeg.getvalue(),
    "larger": _png(Image.fromarray(strokes(2 * size, shape))),
  }


def test_the_variants_are_what_they_claim():
  """The fixtures exercise what they name: alpha, a transparent palette entry, 16 bits, EXIF."""
  encoded = variants()
  modes = {name: Image.open(io.BytesIO(data)).mode for name, data in encoded.items()}
  assert modes["rgba on transparent"] == "RGBA" and modes["la on transparent"] == "LA"
  assert modes["16-bit"] in ("I;16", "I") and modes["rgb"] == "RGB"  # "I": older Pillow
  with Image.open(io.BytesIO(encoded["palette with transparency"])) as p:
    assert p.mode == "P" and p.info["transparency"] == 255
  for name in ("exif-rotated png", "exif-rotated jpeg"):
    with Image.open(io.BytesIO(encoded[name])) as image:
      assert image.getexif()[0x0112] == 6
  # Read without compositing, strokes on transparent black are a black page.
  with Image.open(io.BytesIO(encoded["rgba on transparent"])) as image:
    assert np.asarray(image.convert("L")).max() == 0


@pytest.mark.parametrize("name", list(variants(size=8)))
def test_every_variant_decodes_to_the_plain_grayscale(name):
  gray = strokes()
  decoded = images.decode_gray(variants()[name], name)
  assert decoded.dtype == np.uint8
  if name == "larger":
    assert decoded.shape == (210, 210)
    decoded = images.resize(decoded[None], 105)[0]
  assert decoded.shape == gray.shape
  diff = np.abs(decoded.astype(int) - gray)
  if name in ("exif-rotated jpeg", "larger"):  # lossy compression / resampling
    assert diff.mean() < 2.0 and diff.max() < 64
  else:
    assert diff.max() <= 1


def test_read_images_gives_the_model_input(tmp_path):
  """Every variant, read from files, is the same `[n, 28, 28, 1]` float32 ink map."""
  gray = strokes()
  paths = []
  for i, (name, data) in enumerate(variants().items()):
    paths.append(str(tmp_path / f"{i}.{'jpg' if 'jpeg' in name else 'png'}"))
    with open(paths[-1], "wb") as f:
      f.write(data)
  x = images.read_images(paths, image_size=28)
  assert x.shape == (len(paths), 28, 28, 1) and x.dtype == np.float32
  expected = (255 - images.resize(gray[None], 28)[0]) / np.float32(255.0)
  np.testing.assert_allclose(x[0, ..., 0], expected, atol=1e-6)
  assert x[0].max() > 0.7  # the ink is there, and high
  np.testing.assert_allclose(x[..., 0], np.broadcast_to(expected, x.shape[:3]), atol=0.1)
  assert np.abs(x[..., 0] - expected).mean() < 0.01
  not_inverted = images.read_images(paths[:1], image_size=28, invert=False)
  np.testing.assert_allclose(not_inverted[0], 1.0 - x[0], atol=1e-6)


def test_16_bit_is_scaled_not_clipped():
  levels = np.array([[0, 1000, 32768, 65535]], np.uint16)
  decoded = images.decode_gray(_png(Image.fromarray(levels)), "levels.png")
  assert decoded.tolist() == [[0, 4, 128, 255]]


def test_an_unreadable_image_is_named_in_one_line(tmp_path):
  path = str(tmp_path / "broken.png")
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n not really")
  with pytest.raises(ValueError) as raised:
    images.read_images([path], image_size=28)
  message = str(raised.value)
  assert message == f"cannot decode image {path}: not an image file Pillow can read"
  truncated = _png(Image.fromarray(strokes()))[:200]
  with pytest.raises(ValueError) as raised:
    images.decode_gray(truncated, "cut.png")
  message = str(raised.value)
  assert message.startswith("cannot decode image cut.png: ")
  assert "BytesIO" not in message and "0x" not in message and "\n" not in message
  with pytest.raises(ValueError, match=f"cannot read image {tmp_path}/missing.png: "):
    images.read_images([str(tmp_path / "missing.png")], image_size=28)


def test_list_images_names_what_it_skips(tmp_path):
  for name in ("b.png", "a.JPG", "notes.txt", ".hidden.png", "._a.JPG", "Makefile"):
    (tmp_path / name).write_bytes(b"")
  (tmp_path / "sub").mkdir()
  listing = images.list_images(str(tmp_path))
  assert listing.images == ["a.JPG", "b.png"]
  assert listing.folders == ["sub"]
  assert listing.skipped == [
    ("Makefile", "not an image (no .png, .jpg, .jpeg, .bmp, .gif, .webp extension)"),
    ("notes.txt", "not an image (no .png, .jpg, .jpeg, .bmp, .gif, .webp extension)"),
  ]
  assert os.listdir(tmp_path)  # nothing removed
