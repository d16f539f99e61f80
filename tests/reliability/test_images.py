"""Bad images: damaged files are found up front, before any model work, and every
colour mode is converted to RGB."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from backbones.blip_tiny import BlipTiny
from harness.config import RunConfig
from harness.core.errors import HarnessError
from harness.pipeline import run
from harness.suites import SUITES
from harness.suites.cirr_layout import check_images
from harness.suites.image_files import MAX_PIXELS, image_problem, open_rgb
from tests.reliability.faults import fault

RGB = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height: a valid IHDR, an empty IDAT, IEND. Opening it
    reads the size without allocating anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "zero-byte":
        path.write_bytes(b"")
    elif how == "truncated PNG":
        path.write_bytes(data[: len(data) // 2])
    elif how == "truncated JPEG":
        path.write_bytes(jpeg_bytes(Image.open(path).convert("RGB"))[:-200])
    elif how == "not an image":
        path.write_bytes(b"<html>404 not found</html>")
    elif how == "huge (past PIL's bomb limit)":
        path.write_bytes(png_header_only(20_000, 20_000))
    elif how == "huge (over 89 MP)":
        path.write_bytes(png_header_only(10_000, 10_000))


DAMAGES = ["missing", "zero-byte", "truncated PNG", "truncated JPEG", "not an image",
           "huge (past PIL's bomb limit)", "huge (over 89 MP)"]


@pytest.mark.parametrize("how", DAMAGES)
@fault("Bad images", "missing, zero-byte, truncated PNG or JPEG, not an image, or over 89 MP (header only)",
       "check_images lists every bad file with its problem; nothing is decoded")
def test_damaged_image_found_up_front(shapes_copy, how):
    data = SUITES.get("shapes")(shapes_copy).load("val")
    victims = data.gallery[3:5]
    for image_id in victims:
        damage(data.image_path(image_id), how)
    with pytest.raises(HarnessError) as err:
        check_images(data, data.gallery)
    message = str(err.value)
    assert f"2 of {len(data.gallery)} images of shapes/val" in message
    for image_id in victims:
        assert str(data.image_path(image_id)) in message
    expected = {"missing": "(missing)", "zero-byte": "empty file (0 bytes)", "truncated PNG": "unreadable",
                "truncated JPEG": "truncated (no JPEG end marker", "not an image": "unreadable",
                "huge (past PIL's bomb limit)": "too large to decode safely",
                "huge (over 89 MP)": f"over the {MAX_PIXELS:,}-pixel limit"}[how]
    assert expected in message


@fault("Bad images", "one truncated gallery image in a full run (`harness.run`)",
       "the run stops with the file named before the backbone is loaded")
def test_run_stops_before_model_work(shapes_copy, tmp_path, monkeypatch):
    data = SUITES.get("shapes")(shapes_copy).load("val")
    damage(data.image_path(data.gallery[0]), "truncated PNG")

    def no_model(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the images were checked")

    monkeypatch.setattr(BlipTiny, "load", classmethod(no_model))
    config = RunConfig.resolve({"data_root": str(shapes_copy), "out": str(tmp_path), "train": False})
    with pytest.raises(HarnessError, match=str(data.image_path(data.gallery[0])).replace(".", r"\.")):
        run(config, argv=[])


def png_with_broken_pixels() -> bytes:
    """A PNG whose chunks are all intact (right CRCs) but whose compressed pixel
    stream is cut: the header and checksum check pass, decoding fails."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + RGB[row].tobytes() for row in range(8))
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    idat = zlib.compress(raw)[:20]
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@fault("Bad images", "damage the up-front check cannot see (PNG chunks intact, pixel stream cut)",
       "decoding raises HarnessError naming the image id and path; never a silent blank image")
def test_damage_found_at_decode_names_the_image(shapes_copy):
    data = SUITES.get("shapes")(shapes_copy).load("val")
    path = data.image_path(data.gallery[0])
    path.write_bytes(png_with_broken_pixels())
    check_images(data, data.gallery)  # passes: only decoding can tell
    with pytest.raises(HarnessError, match=rf"image '{data.gallery[0]}' at .*could not be read"):
        data.load_image(data.gallery[0])


MODES = {
    "RGBA": lambda: Image.fromarray(np.dstack([RGB, np.full((8, 8), 7, np.uint8)]), "RGBA"),
    "LA": lambda: Image.fromarray(RGB[..., 0]).convert("LA"),
    "L": lambda: Image.fromarray(RGB[..., 0], "L"),
    "1": lambda: Image.fromarray(RGB[..., 0] > 100),
    "P": lambda: Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
    "CMYK": lambda: Image.fromarray(RGB).convert("CMYK"),
    "I;16": lambda: Image.fromarray(RGB[..., 0].astype(np.uint16) * 256 + 255),
}


@pytest.mark.parametrize("mode", MODES)
@fault("Bad images", "RGBA, LA, L, 1-bit, palette, CMYK (JPEG) and 16-bit greyscale files",
       "decoded to RGB (alpha dropped as BLIP does; 16-bit keeps its top 8 bits), and pass the check")
def test_every_mode_becomes_rgb(tmp_path, mode):
    image = MODES[mode]()
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    image.save(path)
    assert Image.open(path).mode == mode or mode == "1"  # PNG stores 1-bit as 1
    assert image_problem(path) is None
    rgb = open_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (8, 8)
    pixels = np.asarray(rgb)
    if mode in ("L", "LA", "I;16"):
        assert (pixels == RGB[..., :1]).all()  # grey copied to the three channels, top 8 bits
    if mode == "RGBA":
        assert (pixels == RGB).all()
    if mode == "CMYK":
        assert np.abs(pixels.astype(int) - RGB).mean() < 25  # lossy JPEG, but the same picture


@fault("Bad images", "a JPEG with 4 KB of data after its end marker (legal; some cameras append some)",
       "accepted: not mistaken for a truncated file")
def test_jpeg_with_trailing_data_is_fine(tmp_path):
    path = tmp_path / "tail.jpg"
    path.write_bytes(jpeg_bytes(Image.fromarray(RGB)) + bytes(range(256)) * 16)
    assert image_problem(path) is None
    assert open_rgb(path).size == (8, 8)


def test_check_reads_headers_only(shapes_copy, monkeypatch):
    """Cheap: the up-front check of a split decodes no pixel data."""
    data = SUITES.get("shapes")(shapes_copy).load("val")
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("an image was decoded"))
    check_images(data, data.gallery)
