"""EgoCVR's files, read and checked row by row (every error names the file and line).

The layout is EgoCVR's repository (ExplainableML/EgoCVR at fc08f95; paths from
egocvr_retrieval.py lines 34-35, 108-131 and 409-411):

    <root>/annotation/egocvr/egocvr_annotations.csv          the 2,295 queries
    <root>/annotation/egocvr/egocvr_data.csv                 the pool: clip_name, narration_text, video_uid
    <root>/annotation/egocvr/egocvr_annotations_gallery.csv  optional: the queries plus global_idx, local_idx
    <root>/data/egocvr_clips/<video_uid>/<clip_name>.mp4     the clips

A clip id is `<video_uid>_<start>_<end>`: the Ego4D video's UUID and the clip's start
and end in seconds, a decimal point written "-" (`..._2446-454_2454-454` in
egocvr_data.csv; the annotations' ids are whole seconds); start < end.

egocvr_data.csv lists 12,526 rows but 10,666 distinct clips: its first 1,975 rows are
the query and target clips, each once; 1,390 distractor clips appear in 2 to 10 rows.
The pool here is the distinct clips in first-row order; a gallery list's row indices
(global_idx, local_idx, which EgoCVR's code compares with the rows of its embedding
file, egocvr_retrieval.py lines 255-271 and 393-397) name clips through their rows.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import HarnessError

ANNOTATION_DIR = "annotation/egocvr"
ANNOTATIONS = "egocvr_annotations.csv"
POOL = "egocvr_data.csv"
GALLERY = "egocvr_annotations_gallery.csv"
CLIP_DIR = "data/egocvr_clips"
QUERY_COLUMNS = ("video_clip_id", "target_clip_ids", "instruction")
POOL_COLUMNS = ("clip_name", "video_uid")
GALLERY_COLUMNS = ("video_clip_id", "global_idx", "local_idx")

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_SECONDS = r"\d+(?:-\d+)?"
CLIP_ID = re.compile(rf"^({_UUID})_({_SECONDS})_({_SECONDS})$")


@dataclass(frozen=True)
class Clip:
    video: str  # the Ego4D video's UUID
    start: float  # seconds
    end: float


def parse_clip_id(clip_id: str) -> Clip:
    """The video and boundaries of `<video_uid>_<start>_<end>`; ValueError says what is wrong."""
    match = CLIP_ID.match(clip_id)
    if not match:
        raise ValueError(f"clip id {clip_id!r} is not <video uuid>_<start>_<end> (seconds, '-' as decimal point)")
    start, end = (float(part.replace("-", ".")) for part in match.group(2, 3))
    if not start < end:
        raise ValueError(f"clip id {clip_id!r} ends ({end:g} s) before it starts ({start:g} s)")
    return Clip(match.group(1), start, end)


@dataclass(frozen=True)
class QueryRow:
    line: int  # where the row starts in its file
    clip: str  # video_clip_id
    targets: tuple[str, ...]  # target_clip_ids
    instruction: str
    modified_caption: str  # TF-CVR's modified caption (modified_captions), "" if absent


def _records(path: Path, required: tuple[str, ...]):
    """(line where the record starts, record) for every CSV record; errors name the file."""
    if not path.is_file():
        raise HarnessError(f"{path} is missing")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise HarnessError(f"{path}: no column {', '.join(missing)} (columns: {reader.fieldnames})")
        line = reader.line_num + 1
        for entry in reader:
            if None in entry or any(v is None for v in entry.values()):
                raise HarnessError(f"{path}, line {line}: the row has a different number of fields than the header")
            yield line, entry
            line = reader.line_num + 1


def _clip(value: str, column: str, where: str) -> str:
    try:
        parse_clip_id(value)
    except ValueError as err:
        raise HarnessError(f"{where}: {column}: {err}") from err
    return value


def read_queries(path: Path) -> list[QueryRow]:
    """The annotation file's queries (EgoCVR's README, "Annotations"): one per row."""
    rows = []
    for line, entry in _records(path, QUERY_COLUMNS):
        where = f"{path}, line {line}"
        clip = _clip(entry["video_clip_id"].strip(), "video_clip_id", where)
        try:
            targets = ast.literal_eval(entry["target_clip_ids"].strip())
        except (ValueError, SyntaxError) as err:
            raise HarnessError(f"{where}: target_clip_ids must be a list of clip ids, got "
                               f"{entry['target_clip_ids'][:60]!r} ({err})") from err
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise HarnessError(f"{where}: target_clip_ids must be a non-empty list of clip ids")
        # kept as given: 2 real rows list a target twice (one target here), and 17 list the
        # query clip itself ("No change required.": 9 of them have no other target)
        targets = tuple(dict.fromkeys(_clip(t.strip(), "target_clip_ids", where) for t in targets))
        instruction = entry["instruction"].strip()
        if not instruction:
            raise HarnessError(f"{where}: the instruction is empty")
        rows.append(QueryRow(line, clip, targets, instruction, (entry.get("modified_captions") or "").strip()))
    if not rows:
        raise HarnessError(f"{path} holds no queries")
    return rows


def read_pool(path: Path) -> tuple[list[str], list[int]]:
    """(distinct clips in first-row order, each row's position among them): the pool
    and how a row index (global_idx, local_idx) names a clip."""
    clips: list[str] = []
    position: dict[str, int] = {}
    row_clip: list[int] = []
    for line, entry in _records(path, POOL_COLUMNS):
        where = f"{path}, line {line}"
        clip = _clip(entry["clip_name"].strip(), "clip_name", where)
        if parse_clip_id(clip).video != entry["video_uid"].strip():
            raise HarnessError(f"{where}: clip {clip} does not belong to video_uid {entry['video_uid'].strip()!r}")
        if clip not in position:
            position[clip] = len(clips)
            clips.append(clip)
        row_clip.append(position[clip])
    if not clips:
        raise HarnessError(f"{path} holds no clips")
    return clips, row_clip


def read_gallery_lists(path: Path, queries: list[QueryRow], pool_rows: int) -> dict[str, list[list[int]]]:
    """{"global": [...], "local": [...]}: each query's pool rows from the gallery file
    (egocvr_retrieval.py line 384 reads `<evaluation>_idx`), its rows checked against
    the annotation file's, query by query."""
    lists: dict[str, list[list[int]]] = {"global": [], "local": []}
    count = 0
    for count, (line, entry) in enumerate(_records(path, GALLERY_COLUMNS), start=1):
        where = f"{path}, line {line}"
        if count > len(queries):
            raise HarnessError(f"{where}: more rows than the {len(queries)} queries of the annotation file")
        if entry["video_clip_id"].strip() != queries[count - 1].clip:
            raise HarnessError(f"{where}: video_clip_id {entry['video_clip_id'].strip()} where the annotation "
                               f"file's row {count} has {queries[count - 1].clip}")
        for setting in lists:
            lists[setting].append(_indices(entry[f"{setting}_idx"], f"{setting}_idx", pool_rows, where))
    if count != len(queries):
        raise HarnessError(f"{path}: {count} rows for the annotation file's {len(queries)} queries")
    return lists


def _indices(text: str, column: str, pool_rows: int, where: str) -> list[int]:
    try:
        values = json.loads(text)  # a Python list of ints is JSON, and json reads it fast
    except json.JSONDecodeError as err:
        raise HarnessError(f"{where}: {column} must be a list of row indices, got {text[:60]!r}") from err
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise HarnessError(f"{where}: {column} must be a list of row indices")
    bad = [v for v in values if not 0 <= v < pool_rows]
    if bad:
        raise HarnessError(f"{where}: {column} holds {bad[0]}, outside the pool's rows 0-{pool_rows - 1}")
    return values
