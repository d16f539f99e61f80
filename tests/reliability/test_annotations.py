"""Bad annotations: every problem stops the load with the file, the pair id and what
is wrong; protocol breaks in the train split are skipped and counted instead."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.core.errors import HarnessError
from harness.suites.cirr_layout import read_split
from tests.reliability.faults import fault

IDS = [f"dev-{i}-0-img0" for i in range(8)]


def record(pair_id: int = 1, **changes) -> dict:
    base = {
        "pairid": pair_id,
        "reference": IDS[0],
        "target_hard": IDS[1],
        "target_soft": {IDS[1]: 1.0},
        "caption": "make it red",
        "img_set": {"id": 0, "members": IDS[:6], "reference_rank": 0, "target_rank": 1},
    }
    base.update(changes)
    return base


def write(root: Path, queries, split: str = "val", split_file=None) -> Path:
    (root / "captions").mkdir(parents=True, exist_ok=True)
    (root / "image_splits").mkdir(parents=True, exist_ok=True)
    gallery = split_file if split_file is not None else {i: f"./dev/{i}.png" for i in IDS}
    (root / "image_splits" / f"split.rc2.{split}.json").write_text(json.dumps(gallery))
    caption_file = root / "captions" / f"cap.rc2.{split}.json"
    caption_file.write_text(queries if isinstance(queries, str) else json.dumps(queries))
    return caption_file


def load(root: Path, split: str = "val"):
    return read_split(root, "rc2", split, "cirr")


def error_of(root: Path, split: str = "val") -> str:
    with pytest.raises(HarnessError) as err:
        load(root, split)
    return str(err.value)


@fault("Bad annotations", "caption file is not valid JSON (cut mid-record)",
       "error naming the file: 'is not valid JSON'")
def test_malformed_json(tmp_path):
    caption_file = write(tmp_path, json.dumps([record()])[:-7])
    message = error_of(tmp_path)
    assert str(caption_file) in message and "is not valid JSON" in message


@fault("Bad annotations", "split file holds a list, or an image without a path",
       "error naming the split file")
def test_malformed_split_file(tmp_path):
    write(tmp_path, [record()], split_file=IDS)
    assert "must be a non-empty {id: path} object" in error_of(tmp_path)
    write(tmp_path, [record()], split_file={**{i: f"./dev/{i}.png" for i in IDS}, IDS[3]: None})
    assert f"image {IDS[3]!r} has no path" in error_of(tmp_path)


@pytest.mark.parametrize("field", ["pairid", "reference", "caption", "img_set", "target_hard", "target_soft"])
@fault("Bad annotations", "a query without one of its fields (each field in turn)",
       "error naming the file, the pair id and the field")
def test_missing_field(tmp_path, field):
    broken = record(pair_id=42)
    del broken[field]
    caption_file = write(tmp_path, [record(pair_id=1), broken])
    message = error_of(tmp_path)
    assert str(caption_file) in message and f"missing field(s) {field}" in message
    if field != "pairid":
        assert "pair id 42" in message


@pytest.mark.parametrize("changes, problem", [
    ({"pairid": "7"}, "pairid must be an integer"),
    ({"caption": None}, "caption must be a string"),
    ({"img_set": ["a"]}, "img_set must be an object"),
    ({"target_soft": {IDS[1]: "high"}}, "target_soft must map image ids to finite numbers"),
    ({"reference": 3}, "reference must be an image id"),
])
@fault("Bad annotations", "a field of the wrong type (pair id as text, caption null, ...)",
       "error naming the file, the pair id and the field")
def test_wrong_type(tmp_path, changes, problem):
    write(tmp_path, [record(pair_id=5, **changes)])
    message = error_of(tmp_path)
    assert problem in message and "pair id" in message


@fault("Bad annotations", "two queries with the same pair id",
       "error naming the file and the pair id: 'appears twice'")
def test_duplicate_pair_id(tmp_path):
    caption_file = write(tmp_path, [record(pair_id=9), record(pair_id=3), record(pair_id=9)])
    message = error_of(tmp_path)
    assert str(caption_file) in message and "pair id 9 appears twice" in message


@pytest.mark.parametrize("changes, role", [
    ({"target_hard": "dev-999-0-img0"}, "target_hard 'dev-999-0-img0'"),
    ({"reference": "dev-999-0-img0"}, "reference 'dev-999-0-img0'"),
    ({"target_soft": {"dev-999-0-img0": 1.0}}, "soft target 'dev-999-0-img0'"),
])
@fault("Bad annotations", "target (or reference, soft target) not in the split's gallery",
       "error naming the file, the pair id and the image id")
def test_target_not_in_gallery(tmp_path, changes, role):
    caption_file = write(tmp_path, [record(pair_id=11, **changes)])
    message = error_of(tmp_path)
    assert f"{caption_file}, pair id 11" in message and role in message and "not in the split file" in message


@fault("Bad annotations", "reference equal to target_hard (val, test1)",
       "error naming the file and the pair id")
def test_reference_equals_target_is_an_error(tmp_path):
    caption_file = write(tmp_path, [record(pair_id=1), record(pair_id=2, target_hard=IDS[0])])
    assert f"{caption_file}, pair id 2: reference equals target_hard" in error_of(tmp_path)


@pytest.mark.parametrize("members, problem", [
    (IDS[:5], "img_set does not have 6 distinct members"),
    (IDS[:7], "img_set does not have 6 distinct members"),
    ([IDS[0], IDS[1], IDS[2], IDS[2], IDS[3], IDS[4]], "img_set does not have 6 distinct members"),
    (IDS[1:7], "reference not in its img_set"),
    ([IDS[0], *IDS[2:7]], "target_hard not in its img_set"),
])
@fault("Bad annotations", "img_set without 6 distinct members, or without the reference or target (val, test1)",
       "error naming the file, the pair id and the problem")
def test_bad_img_set_is_an_error(tmp_path, members, problem):
    write(tmp_path, [record(pair_id=4, img_set={"members": members})])
    assert f"pair id 4: {problem}" in error_of(tmp_path)


@fault("Bad annotations", "reference = target and a 5-member img_set in the train split",
       "those queries skipped and counted in the provenance (with their pair ids), a warning printed")
def test_protocol_breaks_in_train_are_counted_skips(tmp_path, capsys):
    queries = [record(pair_id=1), record(pair_id=2, target_hard=IDS[0]),
               record(pair_id=3, img_set={"members": IDS[:5]}), record(pair_id=4)]
    write(tmp_path, queries, split="train")
    data = load(tmp_path, "train")
    assert [q.pair_id for q in data.queries] == [1, 4]
    assert data.provenance["skipped"] == {"reference equals target_hard": 1,
                                          "img_set does not have 6 distinct members": 1}
    assert data.provenance["skipped_pair_ids"]["reference equals target_hard"] == [2]
    assert "skipped 2 training queries" in capsys.readouterr().err


def test_real_cirr_annotations_have_no_protocol_break(cirr_root):
    """The rules hold on real CIRR val and test1: nothing is skipped, nothing refused."""
    for split, count in (("val", 4181), ("test1", 4148)):
        data = load(cirr_root, split)
        assert len(data.queries) == count and "skipped" not in data.provenance


# -- fuzzing ------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["pairid", "reference", "target_hard", "target_soft", "caption", "img_set"]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def mutated(base: list[dict], edits) -> list:
    queries = copy.deepcopy(base)
    for index, action, field_name, value in edits:
        q = queries[index % len(queries)]
        if action == "drop":
            q.pop(field_name, None)
        elif action == "set":
            q[field_name] = value
        elif action == "member":
            members = value if isinstance(value, list) else [value]
            if isinstance(q.get("img_set"), dict):
                q["img_set"]["members"] = members
            else:
                q["img_set"] = {"members": members}
        elif action == "duplicate":
            queries.append(copy.deepcopy(q))
    return queries


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["drop", "set", "member", "duplicate"]),
                                st.sampled_from(FIELDS), JSON_VALUES | st.sampled_from(IDS)),
                      min_size=1, max_size=4))
@fault("Bad annotations", "hypothesis: random drops, replacements and duplicates of fields in valid records",
       "loads (every query well-formed) or HarnessError naming the file; never another exception")
def test_fuzz_record_mutations(tmp_path, edits):
    base = [record(pair_id=i, reference=IDS[i], target_hard=IDS[(i + 1) % 6],
                   target_soft={IDS[(i + 1) % 6]: 1.0}) for i in range(4)]
    caption_file = write(tmp_path, mutated(base, edits))
    try:
        data = load(tmp_path)
    except HarnessError as err:
        assert str(caption_file) in str(err)
        return
    for q in data.queries:
        assert isinstance(q.pair_id, int) and isinstance(q.caption, str)
        assert q.reference != q.target and q.reference in q.members and q.target in q.members
        assert len(set(q.members)) == 6 and set(q.members) <= set(IDS)
    assert len({q.pair_id for q in data.queries}) == len(data.queries)


@FUZZ
@given(content=st.one_of(JSON_VALUES.map(json.dumps), st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
                         st.lists(JSON_VALUES, max_size=3).map(json.dumps)))
@fault("Bad annotations", "hypothesis: arbitrary JSON values and bytes as the caption file",
       "HarnessError naming the file; never another exception")
def test_fuzz_whole_file(tmp_path, content):
    caption_file = write(tmp_path, content)
    try:
        data = load(tmp_path)
    except HarnessError as err:
        assert str(caption_file) in str(err)
        return
    assert data.queries  # an empty or all-invalid file is refused
