"""EgoCVR (harness/suites/egocvr*.py, harness/evaluation/protocols/egocvr.py): the real
annotation files parse, clip ids are checked, malformed rows name their file and line,
the gallery lists map rows to clips, and the protocol's two settings match a brute-force
count over each query's own candidates (several targets, ties, the minimum gallery)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.core.errors import HarnessError
from harness.evaluation.embed import SplitEmbeddings
from harness.evaluation.intervals import method_intervals
from harness.evaluation.protocols import PROTOCOLS, ScoringRules
from harness.suites import egocvr, egocvr_generator
from harness.suites.egocvr_layout import parse_clip_id, read_gallery_lists, read_pool, read_queries
from tests.conftest import REPO

REAL = REPO / "tests" / "data" / "egocvr"
SMALL = egocvr_generator.EgoCVRSpec(frames=8, videos=3, distractor_videos=1, train_sets=0)
HEADER = "video_clip_id,target_clip_ids,video_clip_narration,target_clip_narration,instruction,modified_captions\n"
CLIP = "d1d1b6da-e7f8-48e7-9ee4-d8382582695a"


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("egocvr") / "data"
    egocvr_generator.generate(root, SMALL)
    return root


@pytest.fixture(scope="module")
def derived_root(small_root, tmp_path_factory):
    """The generated set without its gallery file: the lists are derived."""
    root = tmp_path_factory.mktemp("egocvr-derived") / "data"
    shutil.copytree(small_root, root)
    (root / "annotation" / "egocvr" / "egocvr_annotations_gallery.csv").unlink()
    return root


def test_vendored_files_are_unchanged():
    for line in (REAL / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((REAL / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (REAL / "LICENSE").read_text()


def test_the_real_annotations_parse():
    rows = read_queries(REAL / "egocvr_annotations.csv")
    assert len(rows) == 2295
    ids = [c for r in rows for c in (r.clip, *r.targets)]
    clips = [parse_clip_id(c) for c in ids]  # every id well-formed: raises otherwise
    assert all(c.start < c.end for c in clips)
    assert all(parse_clip_id(t).video == parse_clip_id(r.clip).video for r in rows for t in r.targets)
    assert sum(len(r.targets) > 1 for r in rows) == 287  # several distinct targets
    assert sum(len(r.targets) for r in rows) == 2771
    assert sum(r.clip in r.targets for r in rows) == 17  # "No change required."
    assert len({r.clip for r in rows}) == 1864  # a clip is the query of several queries
    assert rows[0].line == 2 and rows[-1].line == 2296


def test_the_real_pool_and_derived_local_galleries():
    rows = read_queries(REAL / "egocvr_annotations.csv")
    clips, row_clip = read_pool(REAL / "egocvr_data.csv")
    assert (len(clips), len(row_clip)) == (10666, 12526)
    assert clips[:1975] == [clips[i] for i in row_clip[:1975]]  # queries and targets first, once each
    candidates, made = egocvr.galleries(REAL, rows, clips, row_clip)  # no gallery file here: derived
    assert made.startswith("derived") and candidates["global"] == [None] * 2295
    position = {c: i for i, c in enumerate(clips)}
    for row, local in zip(rows, candidates["local"]):
        video = parse_clip_id(row.clip).video
        assert {parse_clip_id(clips[i]).video for i in local} == {video}
        assert {position[c] for c in (row.clip, *row.targets)} <= set(local.tolist())
    assert np.mean([len(x) for x in candidates["local"]]) == pytest.approx(21.03, abs=0.01)


def test_clip_ids_with_decimal_seconds_and_bad_ids():
    clip = parse_clip_id("002c3b5c-ed86-4af3-99a1-4b497b7c8a86_2446-454_2454-454")
    assert (clip.start, clip.end) == (2446.454, 2454.454)
    with pytest.raises(ValueError, match="ends .* before it starts"):
        parse_clip_id(f"{CLIP}_20_10")
    with pytest.raises(ValueError, match="not <video uuid>_<start>_<end>"):
        parse_clip_id("d1d1b6da_971_980")


@pytest.mark.parametrize("row, message", [
    (f'{CLIP}_1_9,[\'{CLIP}_8_1\'],a,b,Shake it.,c\n', r"line 4: target_clip_ids: clip id .* ends"),
    (f'{CLIP}_1_9,"not a list",a,b,Shake it.,c\n', "line 4: target_clip_ids must be a list"),
    (f"{CLIP}_1_9,[],a,b,Shake it.,c\n", "line 4: target_clip_ids must be a non-empty list"),
    (f"{CLIP}_1_9,['{CLIP}_2_9'],a,b, ,c\n", "line 4: the instruction is empty"),
    (f"{CLIP}-x_1_9,['{CLIP}_2_9'],a,b,Shake it.,c\n", "line 4: video_clip_id: clip id"),
    (f"{CLIP}_1_9,['{CLIP}_2_9'],a,b\n", "line 4: the row has a different number of fields"),
])
def test_malformed_rows_name_the_file_and_line(tmp_path, row, message):
    path = tmp_path / "egocvr_annotations.csv"
    good = f"{CLIP}_1_9,['{CLIP}_2_9'],\"two\nlines\",b,Shake it.,c\n"  # a quoted field over two lines
    path.write_text(HEADER + good + row)  # the bad record starts on line 4: the first spans lines 2-3
    with pytest.raises(HarnessError, match=f"{path.name}, {message}"):
        read_queries(path)


def test_gallery_lists_map_rows_to_clips_and_are_checked(tmp_path):
    rows = read_queries(REAL / "egocvr_annotations.csv")[:2]
    path = tmp_path / "egocvr_annotations_gallery.csv"
    path.write_text("video_clip_id,global_idx,local_idx\n"
                    f"{rows[0].clip},\"[0, 1, 1, 5]\",\"[0, 1]\"\n{rows[1].clip},\"[2, 3]\",\"[1]\"\n")
    assert read_gallery_lists(path, rows, 6) == {"global": [[0, 1, 1, 5], [2, 3]], "local": [[0, 1], [1]]}
    with pytest.raises(HarnessError, match=r"line 2: global_idx holds 5, outside the pool's rows 0-4"):
        read_gallery_lists(path, rows, 5)
    with pytest.raises(HarnessError, match=r"line 2: video_clip_id .* where the annotation file's row 1 has"):
        read_gallery_lists(path, rows[::-1], 6)


def test_generated_set_loads_with_its_gallery_file(small_root):
    data = egocvr.EgoCVRSuite(small_root).load("test")
    assert len(data.queries) == 15 and data.provenance["galleries"].startswith("egocvr_annotations_gallery.csv")
    assert data.queries[0].ground_truths and len(data.queries[0].ground_truths) == 2  # a second target
    assert all(len(g) == len(data.gallery) for g in data.candidates["global"])  # every row, copies once
    assert all(len(g) == 7 for g in data.candidates["local"][:5])  # the query video's 7 clips
    assert len(data.frames[data.gallery[0]]) == SMALL.target_frames


def _embeddings(data, seed: int = 0) -> SplitEmbeddings:
    """Small-integer vectors: every score exact, ties common."""
    rng = torch.Generator().manual_seed(seed)
    gallery = torch.randint(-2, 3, (len(data.gallery), 6), generator=rng).float()
    composed = torch.randint(-2, 3, (len(data.queries), 6), generator=rng).float()
    return SplitEmbeddings(list(data.gallery), gallery, composed, composed.flip(1), None)


def _brute_force(data, emb, setting, ks, reference_removed):
    """Recall@K in one setting, query by query, as EgoCVR's loop counts it (ties pessimistic)."""
    index = {g: i for i, g in enumerate(data.gallery)}
    scores = (emb.composed @ emb.gallery.T).numpy()
    hits, kept = {k: 0 for k in ks}, 0
    for i, q in enumerate(data.queries):
        rows = data.candidates[setting][i]
        gallery = set(range(len(data.gallery)) if rows is None else rows.tolist())
        if reference_removed:
            gallery.discard(index[q.reference_item])
        if len(gallery) < 2:
            continue
        kept += 1
        targets = [index[t] for t in (q.ground_truths or (q.target,)) if index[t] in gallery]
        best = min((sum(scores[i, c] >= scores[i, t] for c in gallery if c != t) for t in targets), default=None)
        for k in ks:
            hits[k] += best is not None and best < k
    return {k: 100.0 * h / kept for k, h in hits.items()}


@pytest.mark.parametrize("reference", ["keep", "remove"])
@pytest.mark.parametrize("lists", ["official", "derived"])
def test_both_settings_match_a_brute_force_count(small_root, derived_root, reference, lists):
    data = egocvr.EgoCVRSuite(small_root if lists == "official" else derived_root).load("test")
    data.candidates["local"][3] = data.candidates["local"][3][:1]  # a one-clip gallery: left out
    emb = _embeddings(data)
    second = data.gallery.index(data.queries[0].ground_truths[1])  # query 0 finds only its second target
    emb.gallery[second] = emb.composed[0] = torch.tensor([10.0, 0, 0, 0, 0, 0])
    protocol = PROTOCOLS.get("egocvr")
    rules = ScoringRules(reference=reference)
    metrics = protocol.evaluate(data, emb, rules)["composed f(q,t)"]
    for setting, ks in (("global", (1, 5, 10)), ("local", (1, 2, 3))):
        want = _brute_force(data, emb, setting, ks, reference == "remove")
        assert [metrics[f"{setting} R@{k}"] for k in ks] == pytest.approx([want[k] for k in ks], abs=1e-12)
    values = protocol.query_values(data, emb, rules)
    for name, v in values["composed f(q,t)"].items():  # the bootstrap's per-query values average to the metric
        assert 100.0 * float(v.double().mean()) == pytest.approx(metrics[name], abs=1e-9)
    assert set(method_intervals(values, "composed f(q,t)")["bootstrap"]["composed f(q,t)"]) == set(metrics)
    assert values["composed f(q,t)"]["global R@1"][0] > 0  # a hit through the second target
    described = protocol.describe(data, rules)
    assert described["settings"]["local"]["queries_kept"] == len(data.queries) - 1


def test_records_give_each_setting_its_rank(small_root):
    data = egocvr.EgoCVRSuite(small_root).load("test")
    emb = _embeddings(data, seed=1)
    emb.composed = emb.gallery[[data.gallery.index(q.target) for q in data.queries]].clone()
    records = PROTOCOLS.get("egocvr").query_records(data, emb, ScoringRules(reference="keep"))
    first = records[0]["methods"]["composed f(q,t)"]
    assert first["target_rank"] is not None and first["local_rank"] <= first["target_rank"]
    assert records[0]["targets"] == list(data.queries[0].ground_truths)
    assert len(first["top"]) == 10 and json.dumps(records)


def test_a_missing_clip_is_reported_up_front(small_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(small_root, root)
    clip = next((root / "data" / "egocvr_clips").rglob("*.mp4"))
    clip.unlink()
    with pytest.raises(HarnessError, match=f"1 of .* videos cannot be used:\n  .*{clip.name}: missing"):
        egocvr.EgoCVRSuite(root).load("test")


def test_without_the_gallery_file_the_lists_are_derived(small_root, derived_root):
    data = egocvr.EgoCVRSuite(derived_root).load("test")
    assert data.provenance["galleries"].startswith("derived") and data.candidates["global"][0] is None
    official = egocvr.EgoCVRSuite(small_root).load("test")
    assert [x.tolist() for x in data.candidates["local"]] == [x.tolist() for x in official.candidates["local"]]
    assert "derived" in data.provenance["gallery"]  # the fingerprint's gallery field tells them apart


def test_egocvr_has_no_train_split_and_defaults_to_keep(small_root):
    from harness.config import RunConfig

    with pytest.raises(HarnessError, match="egocvr has the split test only"):
        egocvr.EgoCVRSuite(small_root).load("train")
    with pytest.raises(HarnessError, match="no train split"):
        egocvr.EgoCVRSuite(small_root).load_training("train")
    assert RunConfig.resolve({"suite": "egocvr"}).reference == "keep"
    assert RunConfig.resolve({"suite": "egocvr", "reference": "remove"}).reference == "remove"
    assert RunConfig.resolve({"suite": "webvid-covr"}).reference == "remove"


def test_paper_protocol_is_recorded():
    from harness.evaluation.paper import EGOCVR_CODE_PROTOCOL, PAPER_EGOCVR

    assert EGOCVR_CODE_PROTOCOL["reference_removed"] is False and PAPER_EGOCVR == []
    assert Path(egocvr.__file__).name == "egocvr.py"


@pytest.mark.parametrize("reference", ["keep", "remove"])
def test_mixing_sweep_entries_are_the_protocols_figures(small_root, reference, monkeypatch):
    from harness.evaluation.embed import COMPOSED
    from harness.mixing.adapters import MIXERS
    from harness.mixing.grid import mix
    from harness.mixing.parts import heldout_halves, make_part

    monkeypatch.setenv("COIR_COMPILE", "0")  # the same integers; compiling the counts costs a minute here
    data = egocvr.EgoCVRSuite(small_root).load("test")
    rng = np.random.default_rng(0)
    index = {g: i for i, g in enumerate(data.gallery)}
    gallery = rng.normal(size=(len(data.gallery), 8)) * rng.uniform(0.3, 1.0, size=(len(data.gallery), 1))
    targets = gallery[[index[q.target] for q in data.queries]]
    q, t, f = (torch.tensor(rng.normal(size=targets.shape) + lean * targets, dtype=torch.float32)
               for lean in (0.6, 0.0, 1.5))
    emb = SplitEmbeddings(list(data.gallery), torch.tensor(gallery, dtype=torch.float32), f, q, t)
    mixer, protocol = MIXERS.get("egocvr"), PROTOCOLS.get("egocvr")
    rules = ScoringRules(reference=reference)
    triples = torch.tensor([(0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.2, 0.3, 0.5), (0.6, 0.0, 0.4)])
    for rows in heldout_halves(data, seed=0):
        part = make_part("half", data, emb, mixer.merge, rows)
        assert [len(c) for c in part.data.candidates.values()] == [len(rows)] * 2  # candidates follow their queries
        metrics, values = mixer.sweep(part, triples, rules)
        for i, weights in enumerate(triples.tolist()):
            mixed = part.embeddings(mix(part.parts, weights))
            assert {m: v[i] for m, v in metrics.items()} == protocol.evaluate(part.data, mixed, rules)[COMPOSED]
            for name, direct in protocol.query_values(part.data, mixed, rules)[COMPOSED].items():
                assert torch.equal(values[name][i], direct), (weights, name)


def test_whole_gallery_studies_are_refused_before_embedding(small_root, tmp_path, monkeypatch):
    """--rerank and --similarity score against the whole gallery: a suite with per-query
    galleries refuses them (before any embedding) rather than scoring another protocol."""
    from harness.config import RunConfig
    from harness.pipeline import run

    monkeypatch.setattr("harness.pipeline.fine_tune_and_embed", lambda *a, **k: pytest.fail("embedded"))
    config = RunConfig.resolve({"suite": "egocvr", "data_root": str(small_root), "out": str(tmp_path),
                                "train": False, "similarity": ("csls-transductive",)})
    with pytest.raises(HarnessError, match="per-query galleries"):
        run(config, argv=["(test)"])


def test_zero_shot_run_reports_both_settings(tmp_path_factory, tmp_path):
    """blip-tiny fine-tuned one epoch on the shapes set beside a generated EgoCVR, then
    scored zero-shot: global R@1/5/10 and local R@1/2/3 for the composed query and both
    baselines, from one embedding pass, with the lists named in the fingerprint."""
    from harness.config import RunConfig
    from harness.pipeline import run

    root = tmp_path_factory.mktemp("egocvr-run") / "data"
    egocvr_generator.generate(root, egocvr_generator.EgoCVRSpec(frames=8, videos=3, distractor_videos=1,
                                                                train_sets=20))
    result = run(RunConfig.resolve({"suite": "egocvr", "data_root": str(root), "out": str(tmp_path), "epochs": 1,
                                    "cache": False}), argv=["(test)"])
    assert result["training"]["trained_on"] == "shapes/train"
    for method in ("composed f(q,t)", "image-only q", "text-only t"):
        assert list(result["metrics"][method]) == ["global R@1", "global R@5", "global R@10",
                                                   "local R@1", "local R@2", "local R@3"]
    assert result["protocol"]["scoring"] == "egocvr" and result["protocol"]["reference_removed"] is False
    assert "egocvr_annotations_gallery.csv" in result["protocol"]["fingerprint"]["gallery"]
    assert result["timings"]["embedding"]["images_encoded"] > 0
    markdown = next(tmp_path.glob("egocvr_test_*.md")).read_text()
    assert "local R@3" in markdown and "No EgoCVR paper rows yet" in markdown
