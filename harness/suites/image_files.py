"""Reading image files safely: a cheap check of every file before any model work,
and decoding to RGB whatever mode the file is in.

- Missing, zero-byte, truncated or undecodable files are errors naming the file.
  The up-front check reads the header and, for PNG, walks every chunk checking its
  CRC (`Image.verify`, no decompression); a JPEG that does not end with its EOI
  marker (rare: data may follow it) is decoded to tell.
  Damage those checks cannot see is caught when the image is decoded, again as an
  error naming it: a damaged image is never embedded as a blank one
  (`ImageFile.LOAD_TRUNCATED_IMAGES` stays off).
- Images over `MAX_PIXELS` (PIL's decompression-bomb limit, about 89 MP, e.g.
  9,459 x 9,459) are refused from their header, before anything is decoded.
- Every mode is converted to RGB as BLIP, LAVIS and CoVR do (`convert("RGB")`):
  L, 1, P and CMYK are expanded, an alpha channel (RGBA, LA, PA) is dropped, and
  16-bit greyscale keeps its top 8 bits instead of saturating.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from harness.core.errors import HarnessError

MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
JPEG_END = b"\xff\xd9"
READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def image_problem(path: Path) -> str | None:
    """Why the file at path cannot be used, or None. Cheap: no pixel is decoded."""
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                fmt = image.format
                if width * height > MAX_PIXELS:
                    return f"{width}x{height} pixels, over the {MAX_PIXELS:,}-pixel limit"
                if fmt == "PNG":
                    image.verify()  # every chunk's CRC, up to IEND: finds truncation
    except Image.DecompressionBombError as err:
        return f"too large to decode safely ({err})"
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises SyntaxError on some corrupt files
        return f"unreadable ({err})"
    if fmt == "JPEG" and not _ends_with_jpeg_marker(path):
        try:  # rare: data after the end marker is legal, so decode this one to be sure
            open_rgb(path)
        except READ_ERRORS as err:
            return f"truncated (no JPEG end marker; {err})"
    return None


def _ends_with_jpeg_marker(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 64))
        return JPEG_END in handle.read()  # a few padding bytes after EOI are common


def open_rgb(path: Path) -> Image.Image:
    """The decoded image as RGB; OSError (or DecompressionBombError) if it cannot be."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                image.load()
                return to_rgb(image)
        except Image.DecompressionBombWarning as err:
            raise Image.DecompressionBombError(str(err)) from err


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def unreadable(image_id: str, path: Path, err: BaseException, help_text: str) -> HarnessError:
    return HarnessError(f"image {image_id!r} at {path} could not be read ({err}).\n{help_text}")

