"""Video files through PyAV (its wheels ship their own FFmpeg: no system ffmpeg):
decoding the frames a suite needs, once, into PNG files of a frame cache, and
writing the generated clips.

A video that is missing, empty, undecodable or shorter than asked is an error that
names it, collected for every video of a split before anything is embedded (CoVR
substitutes a black frame for such a video; a blank frame here would be a silent
wrong number).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def sampled_frames(count: int, length: int) -> list[int]:
    """`count` frame indices spread over a video of `length` frames: the middle of
    each of `count` equal spans (fewer for a shorter video), as CoVR samples the
    frames it embeds for a target video."""
    count = min(count, length)
    edges = np.linspace(0, length, count + 1).astype(int)
    return [int((start + end - 1) // 2) for start, end in zip(edges[:-1], edges[1:])]


def _frames(path: Path):
    """The video's frames as PyAV frames, one at a time. ValueError names what is wrong."""
    import av

    if not path.is_file():
        raise ValueError("missing")
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            yield from container.decode(video=0)
    except av.FFmpegError as err:
        raise ValueError(f"unreadable ({err})") from err


def frame_folder(cache: Path, video: Path) -> Path:
    """Where the frames of `video` are cached: named by the file's path, size and
    modification time, so a replaced video is decoded again."""
    stat = video.stat()
    key = f"{video.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return cache / hashlib.sha256(key.encode()).hexdigest()[:16]


def frame_count(cache: Path, video: Path) -> tuple[Path, int]:
    """(cache folder, number of frames) of a video, decoding it once to count (kept
    in <folder>/frames.txt). ValueError for a missing, unreadable or empty video."""
    if not video.is_file():
        raise ValueError("missing")
    folder = frame_folder(cache, video)
    try:
        return folder, int((folder / "frames.txt").read_text())
    except (OSError, ValueError):
        pass
    count = sum(1 for _ in _frames(video))
    if count == 0:
        raise ValueError("no frames")
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "frames.txt", lambda tmp: tmp.write_text(str(count)))
    return folder, count


def save_frames(video: Path, folder: Path, indices: set[int]) -> None:
    """<folder>/<index>.png for each wanted frame not cached yet, in one decoding pass;
    a video that ends before a wanted frame (truncated since it was counted) is an error."""
    missing = {i for i in indices if not (folder / f"{i}.png").is_file()}
    if not missing:
        return
    last = max(missing)
    for index, frame in enumerate(_frames(video)):
        if index in missing:
            image = frame.to_image().convert("RGB")
            _write(folder / f"{index}.png", lambda tmp, image=image: image.save(tmp, format="PNG"))
        if index >= last:
            return
    raise ValueError(f"ends before frame {last}: truncated")


def _write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def write_clip(path: Path, frames: Sequence[Image.Image], fps: int = 8) -> None:
    """An MP4 (MPEG-4 part 2, all intra frames: every frame decodes on its own) of the frames."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.mp4")  # the muxer picks the format by suffix
    width, height = frames[0].size
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2", "g": "1"}  # near-lossless, every frame a key frame
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
