"""Bad embeddings: nothing is scored from NaN, mismatched, empty or duplicated
embeddings; the error names the tensor and the rows."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.core.errors import HarnessError
from harness.evaluation.embed import SplitEmbeddings
from harness.evaluation.protocols.cirr import evaluate_methods, write_server_files
from harness.pipeline import run
from harness.suites import SUITES
from tests.reliability.faults import fault

D = 8


@pytest.fixture(scope="module")
def val(small_shapes):
    return SUITES.get("shapes")(small_shapes).load("val")


@pytest.fixture(scope="module")
def split_test1(small_shapes):
    return SUITES.get("shapes")(small_shapes).load("test1")


def good(data, dim: int = D) -> SplitEmbeddings:
    g, q = len(data.gallery), len(data.queries)
    torch.manual_seed(0)
    return SplitEmbeddings(list(data.gallery), torch.randn(g, dim), torch.randn(q, dim),
                           torch.randn(q, dim), torch.randn(q, dim))


def refused(data, emb) -> str:
    with pytest.raises(HarnessError) as err:
        evaluate_methods(data, emb, "covr", "pessimistic")
    return str(err.value)


def test_good_embeddings_score(val):
    metrics = evaluate_methods(val, good(val), "covr", "pessimistic")
    assert set(metrics) == {"composed f(q,t)", "image-only q", "text-only t"}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("tensor", ["gallery", "composed", "image", "text"])
@fault("Bad embeddings", "NaN, +inf or -inf in the gallery or in any query tensor",
       "error before scoring naming the tensor, the kind of value and the first ids / pair ids")
def test_non_finite_values(val, tensor, value):
    emb = good(val)
    getattr(emb, tensor)[2, 3] = value
    message = refused(val, emb)
    kind = "NaN" if value != value else "inf"
    assert f"1 of {getattr(emb, tensor).shape[0]} {tensor} rows hold {kind} values" in message
    row_name = val.gallery[2] if tensor == "gallery" else f"pair id {val.queries[2].pair_id}"
    assert row_name in message


@fault("Bad embeddings", "query dimension differs from the gallery's (256 vs 255)",
       "error before scoring naming both dimensions")
def test_dimension_mismatch(val):
    emb = good(val, dim=256)
    emb.composed = emb.composed[:, :255]
    assert "composed queries have dimension 255 but the gallery 256" in refused(val, emb)


@fault("Bad embeddings", "empty gallery (no ids, 0 rows)", "error before scoring: 'the gallery is empty'")
def test_empty_gallery(val):
    emb = dataclasses.replace(good(val), gallery_ids=[], gallery=torch.empty(0, D))
    assert "the gallery is empty" in refused(val, emb)


@fault("Bad embeddings", "duplicate gallery ids", "error before scoring naming the repeated ids")
def test_duplicate_gallery_ids(val):
    emb = good(val)
    emb.gallery_ids[5] = emb.gallery_ids[4]
    assert f"1 gallery ids appear more than once: {val.gallery[4]}" in refused(val, emb)


@pytest.mark.parametrize("fault_kind", ["gallery rows", "query rows", "gallery order"])
@fault("Bad embeddings", "row count not the number of gallery ids / queries, or gallery ids in another order",
       "error before scoring naming the counts or the first differing position")
def test_rows_do_not_match_the_split(val, fault_kind):
    emb = good(val)
    if fault_kind == "gallery rows":
        emb.gallery = emb.gallery[:-1]
        expected = f"{len(val.gallery) - 1} gallery rows for {len(val.gallery)} gallery ids"
    elif fault_kind == "query rows":
        emb.text = emb.text[:-2]
        expected = f"{len(val.queries) - 2} text rows for {len(val.queries)} queries"
    else:
        emb.gallery_ids[0], emb.gallery_ids[1] = emb.gallery_ids[1], emb.gallery_ids[0]
        expected = "first difference at position 0"
    assert expected in refused(val, emb)


@fault("Bad embeddings", "NaN in the composed queries of test1 (server files)",
       "error before any server file is written")
def test_server_files_are_not_written_from_bad_embeddings(split_test1, tmp_path):
    emb = good(split_test1)
    emb.composed[0, 0] = float("nan")
    with pytest.raises(HarnessError, match="composed rows hold NaN"):
        write_server_files(split_test1, emb, tmp_path, "run")
    assert not list(tmp_path.iterdir())


@fault("Bad embeddings", "a cache entry whose stored gallery holds NaN (identity intact)",
       "the run stops before scoring, saying to rerun with --no-cache")
def test_poisoned_cache_entry_stops_the_run(cached_eval_config, tmp_path):
    config = cached_eval_config
    run(config, argv=[])
    [entry] = (tmp_path / "cache" / "embeddings").glob("shapes_val_*.safetensors")
    tensors = load_file(str(entry))
    with open(entry, "rb") as handle:
        metadata = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))["__metadata__"]
    tensors["gallery"][0, 0] = float("nan")
    save_file(tensors, str(entry), metadata=metadata)
    with pytest.raises(HarnessError, match=r"gallery rows hold NaN values .*--no-cache"):
        run(config, argv=[])
