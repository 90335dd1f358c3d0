"""Image files → 8-bit RGB pixels, decoded the way a careful image library does; the one decoder cliplab uses.

- every format PIL can open is accepted (`image_extensions`); a multi-frame file (GIF, APNG, TIFF) gives its
  first frame;
- EXIF orientation is applied, so a phone photo stored sideways reaches the model upright;
- high bit depth is scaled, not clipped: 16-bit grey 0..65535 maps onto 0..255 (PIL's own ``convert("RGB")``
  clips it, turning most of the image white); 16-bit RGB is already reduced to 8 bits by PIL;
- transparency is composited over white, as a browser shows the image on a white page;
- the decoded size is bounded by ``max_pixels``: a JPEG decodes at a reduced scale (``draft``), any other format
  is reduced by an integer box factor as soon as it is decoded, so at most one full-size image is in memory per
  decoding thread and nothing larger than ``max_pixels`` leaves this module.

Anything PIL cannot decode (not an image, truncated, a decompression bomb) raises CliplabError naming the file.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image

from cliplab.errors import CliplabError

# 16.8 MP: far above what any CLIP input needs (224–448 px), far below PIL's decompression-bomb limit (89 MP).
MAX_PIXELS = 4096 * 4096
EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_WITH_ALPHA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_REDUCIBLE = frozenset({"L", "RGB", "RGBA", "LA", "I", "F", "CMYK"})


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (".jpg", ".gif", ...) of every format PIL can open here."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def decode_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a file path or encoded bytes into an upright 8-bit RGB image of at most ``max_pixels`` pixels."""
    name = "image bytes" if isinstance(source, bytes) else os.fspath(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return _to_rgb(image, max_pixels)
    # PIL's format plugins raise many unrelated types (OSError, SyntaxError, ValueError, struct.error...) on
    # malformed bytes; all of them mean "this file cannot be used".
    except Exception as exc:
        raise CliplabError(f"cannot decode image {name}: {type(exc).__name__}: {exc}") from exc


def _to_rgb(image: Image.Image, max_pixels: int) -> Image.Image:
    orientation = image.getexif().get(EXIF_ORIENTATION)  # read before decoding: reduced copies carry no EXIF
    factor = reduction(image.size, max_pixels)
    if factor > 1 and image.format == "JPEG":
        image.draft("RGB", (image.width // factor, image.height // factor))  # decode at 1/2, 1/4 or 1/8 scale
    image.load()
    factor = reduction(image.size, max_pixels)
    if factor > 1 and image.mode in _REDUCIBLE:
        image = image.reduce(factor)  # before any conversion, so no second full-size copy is made
    rgb = _eight_bit_rgb(image)
    factor = reduction(rgb.size, max_pixels)
    if factor > 1:
        rgb = rgb.reduce(factor)
    return rgb.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else rgb


def reduction(size: tuple[int, int], max_pixels: int) -> int:
    """The smallest integer factor f with ⌈W/f⌉·⌈H/f⌉ ≤ ``max_pixels`` (the size `Image.reduce(f)` gives)."""
    w, h = size
    factor = max(1, math.ceil(math.sqrt(w * h / max_pixels)))  # a lower bound: ⌈W/f⌉·⌈H/f⌉ ≥ WH/f²
    while -(-w // factor) * -(-h // factor) > max_pixels:
        factor += 1
    return factor


def _eight_bit_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scaled_to_bytes(np.asarray(image), mode), "L").convert("RGB")
    if mode in _WITH_ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")  # convert would copy an RGB image


def _scaled_to_bytes(values: np.ndarray, mode: str) -> np.ndarray:
    """Single-channel high-bit-depth pixels → uint8 by their range: 16-bit types over 0..65535; 32-bit integers
    over 0..65535 when they fit (how 16-bit files often arrive), else over their maximum; floats over 0..1 when
    they lie there, else over their own min..max."""
    v = values.astype(np.float64)
    if mode == "F":
        finite = v[np.isfinite(v)]
        lo, hi = (0.0, 1.0) if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1) else (finite.min(), finite.max())
    elif mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        top = v.max(initial=0)
        lo, hi = 0.0, 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    scaled = np.nan_to_num((v - lo) / max(hi - lo, 1e-12) * 255.0, nan=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
