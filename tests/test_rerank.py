"""Two-stage retrieval (harness/rerank): the final ranking scored by the protocol is
exactly what the re-ranker's scores say within the top K and the first stage's order
past it; the option leaves stage 1 alone; the real re-rankers run, train and reload."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from backbones.blip2 import build_tiny_blip2
from backbones.blip_tiny import build_random
from backbones.checkpoints import directory_sha256
from harness.config import RunConfig
from harness.core.errors import HarnessError
from harness.evaluation.embed import COMPOSED, RERANKED, SplitEmbeddings
from harness.evaluation.protocols import PROTOCOLS
from harness.evaluation.protocols.base import ScoringRules
from harness.evaluation.reference_rule import excluded_indices, excluded_items
from harness.pipeline import run
from harness.rerank import RERANKERS
from harness.rerank import step as rerank_step
from harness.rerank.base import RerankSettings
from harness.rerank.candidates import Candidates, first_stage
from harness.rerank.final import final_embeddings, first_stage_matrix
from harness.rerank.step import FinalRanking, scored_stages
from harness.suites import SUITES
from harness.suites.fashioniq_generator import FashionIQSpec, generate
from tests.conftest import CIRR_ANNOTATIONS, random_model_run

CIRR = PROTOCOLS.get("cirr")


def settings(**changes) -> RerankSettings:
    values = dict(reranker="blip-itm", k=50, checkpoint=None, fusion="none", train=False, negatives=7, epochs=1,
                  batch_size=8, lr=1e-4, seed=0)
    return RerankSettings(**{**values, **changes})


def random_cirr(tmp_path, split: str):
    """Real CIRR annotations of `split` with random unit vectors (seeded)."""
    for folder in ("captions", "image_splits"):
        shutil.copytree(CIRR_ANNOTATIONS / folder, tmp_path / folder, dirs_exist_ok=True)
    data = SUITES.get("cirr")(tmp_path).load(split)
    generator = torch.Generator().manual_seed(1)
    gallery = F.normalize(torch.randn(len(data.gallery), 16, generator=generator), dim=-1)
    composed = F.normalize(torch.randn(len(data.queries), 16, generator=generator), dim=-1)
    emb = SplitEmbeddings(list(data.gallery), gallery, composed, None, None)
    index = {g: i for i, g in enumerate(emb.gallery_ids)}
    return data, emb, first_stage(data, emb, excluded_indices(excluded_items(data.queries, "remove"), index), 50)


def stub_scores(data, emb, candidates) -> list[torch.Tensor]:
    """Even queries: the target scores 1, every other candidate 0; odd queries: all 0 (one tie)."""
    out = []
    for qi, q in enumerate(data.queries):
        ids = [emb.gallery_ids[j] for j in candidates.index[qi].tolist()]
        out.append(torch.tensor([1.0 if qi % 2 == 0 and g == q.target else 0.0 for g in ids]))
    return out


@pytest.mark.parametrize("tie_rule", ["pessimistic", "optimistic"])
def test_given_stage2_scores_give_exactly_the_expected_recalls(tmp_path, tie_rule):
    data, emb, candidates = random_cirr(tmp_path, "val")
    final = FinalRanking(data, emb, candidates, stub_scores(data, emb, candidates))
    block = scored_stages(settings(), final, CIRR, ScoringRules(tie_rule=tie_rule))
    inside = torch.tensor([q.target in {emb.gallery_ids[j] for j in candidates.index[qi].tolist()}
                           for qi, q in enumerate(data.queries)], dtype=torch.float64)
    even = torch.tensor([qi % 2 == 0 for qi in range(len(data.queries))], dtype=torch.float64)
    # odd queries: the 50 candidates tie, so the target is 50th (pessimistic) or 1st (optimistic)
    first = inside * even if tie_rule == "pessimistic" else inside
    expected = {"R@1": first, "R@5": first, "R@10": first, "R@50": inside}
    stage2 = block["stage2"]["metrics"]
    for name, hits in expected.items():
        assert stage2[name] == pytest.approx(100.0 * hits.mean().item(), abs=1e-9), name
    assert block["target_in_top_k"] == pytest.approx(100.0 * inside.mean().item())
    assert 0 < inside.sum() < len(data.queries)  # the problem has targets on both sides of K


def test_alpha_one_orders_the_top_k_as_the_first_stage(tmp_path):
    data, emb, candidates = random_cirr(tmp_path, "val")
    noise = [torch.randn(len(i), generator=torch.Generator().manual_seed(qi)) for qi, i in enumerate(candidates.index)]
    block = scored_stages(settings(fusion="1.0"), FinalRanking(data, emb, candidates, noise), CIRR, ScoringRules())
    for name in ("R@1", "R@5", "R@10", "R@50"):
        assert block["stage2"]["metrics"][name] == block["stage1"]["metrics"][name], name
        assert block["stage2_minus_stage1"][name]["difference"] == 0.0
    n = 400  # tuning tries 21 weights: a part of the split is enough here
    part = (dataclasses.replace(data, queries=data.queries[:n]), dataclasses.replace(emb, composed=emb.composed[:n]),
            Candidates(candidates.index[:n], candidates.scores[:n]), noise[:n])
    tuned = scored_stages(settings(fusion="tuned"), FinalRanking(*part), CIRR, ScoringRules())
    assert [t["alpha"] for t in tuned["fusion"]["tuning"]][:3] == [0.0, 0.05, 0.1]
    assert tuned["queries"] == n - n // 2  # the evaluation half


def test_server_files_are_the_final_ranking_and_keep_the_first_stage_past_k(tmp_path):
    """test1: the re-ranker reverses each query's top 10; the recall file's places 11-50
    are the first stage's, untouched."""
    data, emb, top50 = random_cirr(tmp_path, "test1")
    top10 = Candidates([i[:10] for i in top50.index], [s[:10] for s in top50.scores])
    reverse = [torch.arange(len(i), dtype=torch.float32) for i in top10.index]  # the 10th candidate scores highest
    final = final_embeddings(data, emb, first_stage_matrix(emb), top10, reverse)
    files = CIRR.write_server_files(data, final, ScoringRules(), tmp_path / "out", "run")
    recall = json.loads(open(files["recall"]).read())
    for qi, q in enumerate(data.queries):
        first = [emb.gallery_ids[j] for j in top50.index[qi].tolist()]
        assert recall[str(q.pair_id)] == first[:10][::-1] + first[10:50]


def test_the_option_leaves_stage_1_alone_and_reports_both(tmp_path):
    plain = random_model_run(tmp_path)
    two = random_model_run(tmp_path, rerank="blip-itm", rerank_k=5)
    assert two["metrics"] == plain["metrics"]
    block = two["rerank"]
    assert block["stage1"]["metrics"] == {k: v for k, v in plain["metrics"][COMPOSED].items()}
    assert block["k"] == 5 and block["training"] is None and block["cost"]["cross_encoder_pairs"] == 5 * 45
    assert set(block["stage2_minus_stage1"]) == set(block["stage2"]["metrics"])
    assert two["protocol"]["fingerprint"]["rerank"].startswith("blip-itm top 5, fusion none")
    assert two["protocol"]["fingerprint"]["hash"] != plain["protocol"]["fingerprint"]["hash"]
    records = [json.loads(line) for line in open(tmp_path / "out" / two["per_query_file"])]
    assert all(RERANKED in r["methods"] and COMPOSED in r["methods"] for r in records)
    entry = records[0]["methods"][RERANKED]
    assert len(entry["stage2_scores"]) == len(entry["top"]) and entry["stage2_scores"][0] is not None
    stem = tmp_path / "out" / two["per_query_file"].replace(".queries.jsonl", "")
    assert "### Two-stage re-ranking" in stem.with_suffix(".md").read_text()
    page = stem.with_suffix(".html").read_text()
    assert "<h2>Two-stage re-ranking</h2>" in page
    moved = [r for r in records if r["methods"][COMPOSED]["target_rank"] != r["methods"][RERANKED]["target_rank"]]
    assert bool(moved) == ("What the second stage" in page)  # the queries it fixed or broke, when there are any


def test_a_split_without_targets_writes_the_final_rankings_server_files(tmp_path, monkeypatch):
    """The re-ranker (a stub) reverses each top 5: the run's server files hold that order,
    the first stage's files keep theirs under the ".stage1" name."""
    plain = random_model_run(tmp_path, split="test1")
    plain_files = {name: json.loads(open(path).read()) for name, path in plain["server_files"].items()}
    real = rerank_step.second_stage

    def reversing(reranker, data, gallery_ids, candidates, *args):
        _, cost = real(reranker, data, gallery_ids, candidates, *args)
        return [torch.arange(len(i), dtype=torch.float32) for i in candidates.index], cost

    monkeypatch.setattr(rerank_step, "second_stage", reversing)
    two = random_model_run(tmp_path, split="test1", rerank="blip-itm", rerank_k=5)
    block = two["rerank"]
    assert two["server_files"] == block["server_files"] and "stage2" not in block
    assert all(".stage1." in path for path in block["stage1_server_files"].values())
    for name, path in block["stage1_server_files"].items():
        assert json.loads(open(path).read()) == plain_files[name]  # the first stage's, under its own name
    final = json.loads(open(two["server_files"]["recall"]).read())
    first = plain_files["recall"]
    for pair_id, ranked in final.items():
        if pair_id not in ("version", "metric"):
            assert sorted(ranked[:5]) == sorted(first[pair_id][:5]) and ranked[5:] == first[pair_id][5:]
            assert ranked[:5] == first[pair_id][:5][::-1]


def test_a_trained_re_ranker_reloads_from_its_checkpoint(tmp_path):
    trained = random_model_run(tmp_path, rerank="blip-itm", rerank_k=6, rerank_negatives=2, rerank_train=True,
                               rerank_batch_size=4, rerank_epochs=1, train_split="val")
    block = trained["rerank"]
    training = block["training"]
    assert training["negatives"]["per_query"] == 2 and len(training["loss_curve"]) == 1
    checkpoint = training["checkpoint"]
    assert block["checkpoint"] == checkpoint and block["checkpoint_sha256"] == directory_sha256(checkpoint)
    again = random_model_run(tmp_path, rerank="blip-itm", rerank_k=6, rerank_checkpoint=checkpoint)
    assert again["rerank"]["training"] is None
    assert again["rerank"]["checkpoint_sha256"] == block["checkpoint_sha256"]
    assert again["rerank"]["stage2"] == block["stage2"]  # the same weights re-rank the same way


def test_a_tiny_blip2_re_ranks_generated_fashioniq(tmp_path):
    generate(tmp_path / "fiq", FashionIQSpec(queries={"train": 4, "val": 4, "test": 2}))
    build_tiny_blip2(seed=0).save(tmp_path / "blip2")
    result = run(RunConfig.resolve(dict(backbone="blip2", checkpoint=str(tmp_path / "blip2"), suite="fashioniq",
                                        data_root=str(tmp_path / "fiq"), out=str(tmp_path / "out"), train=False,
                                        cache=False, threads=2, rerank="blip2-itm", rerank_k=4)), argv=["(test)"])
    block = result["rerank"]
    assert block["reranker"] == "blip2-itm" and block["cost"]["cross_encoder_pairs"] == 4 * 12
    assert set(block["stage2"]["metrics"]) == set(result["metrics"][COMPOSED])


def test_bad_second_stage_options_stop_before_any_work(tmp_path):
    with pytest.raises(HarnessError, match="add --rerank"):
        RunConfig.resolve({"rerank_k": 10})
    with pytest.raises(HarnessError, match="alpha between 0 and 1"):
        RunConfig.resolve({"rerank": "blip-itm", "rerank_fusion": "1.5"})
    with pytest.raises(HarnessError, match="below --rerank-k"):
        RunConfig.resolve({"rerank": "blip-itm", "rerank_k": 5, "rerank_negatives": 5})
    with pytest.raises(HarnessError, match="Did you mean 'blip-itm'"):
        RunConfig.resolve({"rerank": "blip-itn"})
    with pytest.raises(HarnessError, match="use it with one of those backbones"):
        random_model_run(tmp_path, rerank="blip2-itm")
    with pytest.raises(HarnessError, match="needs targets to tune on"):
        random_model_run(tmp_path, rerank="blip-itm", rerank_fusion="tuned", split="test1")
    assert not list((tmp_path / "out").glob("*.json"))


def test_re_rankers_score_one_row_per_candidate_and_share_the_reference():
    for name, composer in (("blip-itm", build_random(0)), ("blip2-itm", build_tiny_blip2(0))):
        reranker = RERANKERS.get(name).start(name, composer)
        assert reranker.model is not composer.model  # a copy: training it leaves stage 1 alone
        reranker.model.eval()  # no dropout
        pixels = torch.rand(4, 3, composer.image_size, composer.image_size)
        with torch.no_grad():
            tokens = reranker.image_tokens(pixels)
            shared = reranker.scores(tokens[:1], ["a red circle"], tokens[1:])
            each = reranker.scores(tokens[:1].expand(3, -1, -1), ["a red circle"] * 3, tokens[1:])
        assert shared.shape == (3,) and torch.allclose(shared, each, atol=1e-5)


@pytest.mark.slow
def test_two_ranks_re_rank_as_one_process(tmp_path):
    """torchrun, 2 gloo ranks: each re-ranks half of the queries, the final ranking is the
    one process's; a re-ranker trains with each rank taking half of every batch."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    single = random_model_run(tmp_path, rerank="blip-itm", rerank_k=5)
    common = ["--data-root", str(tmp_path / "shapes"), "--checkpoint", str(tmp_path / "ckpt"), "--no-train",
              "--no-cache", "--threads", "1", "--rerank", "blip-itm", "--rerank-k", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COIR_BENCH_CACHE": str(tmp_path / "cache")}

    def torchrun(out: str, *extra: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "harness.run", *common, *extra, "--out", str(tmp_path / out)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        files = list((tmp_path / out).glob("*.json"))
        assert len(files) == 1, "only rank 0 writes the result"
        return json.loads(files[0].read_text())

    two = torchrun("two")
    assert two["rerank"]["cost"]["ranks"] == 2
    for name, value in single["rerank"]["stage2"]["metrics"].items():
        assert two["rerank"]["stage2"]["metrics"][name] == pytest.approx(value, abs=1e-6), name
    trained = torchrun("trained", "--rerank-train", "--rerank-negatives", "2", "--rerank-batch-size", "4",
                       "--train-split", "val")
    training = trained["rerank"]["training"]
    assert training["world_size"] == 2 and len(set(training["rank_parameter_sha256"])) == 1
