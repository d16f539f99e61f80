"""Similarity methods (harness/similarity): each method's scores against a float64
oracle through the suite's own protocol, the bank rules, and the study in a run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from harness.core.errors import HarnessError
from harness.evaluation.embed import COMPOSED, SplitEmbeddings
from harness.evaluation.protocols import PROTOCOLS
from harness.evaluation.protocols.base import ScoringRules
from harness.evaluation.reference_rule import excluded_indices, excluded_items
from harness.similarity import SIMILARITIES
from harness.similarity.base import Problem
from harness.similarity.dual_softmax import dual_softmax_scores, ranked_scores
from harness.similarity.settings import parse_methods
from harness.similarity.study import half_values
from harness.suites import SUITES
from tests.conftest import CIRR_ANNOTATIONS, random_model_run

RULES = ScoringRules()
CLEAR = 5e-6  # a query is compared with the oracle only when no item scores this close to its target (fp32 error ~1e-6)


@pytest.fixture(scope="module")
def cirr_problem(tmp_path_factory):
    """Real CIRR val annotations (4,181 queries, 2,297 images) with random unit vectors:
    a CIRR-size problem without images."""
    root = tmp_path_factory.mktemp("cirr_similarity")
    for folder in ("captions", "image_splits"):
        shutil.copytree(CIRR_ANNOTATIONS / folder, root / folder)
    data = SUITES.get("cirr")(root).load("val")
    generator = torch.Generator().manual_seed(0)

    def unit(n: int) -> torch.Tensor:
        return F.normalize(torch.randn(n, 16, generator=generator), dim=-1)

    emb = SplitEmbeddings(list(data.gallery), unit(len(data.gallery)), unit(len(data.queries)), None, None)
    index = {g: i for i, g in enumerate(emb.gallery_ids)}
    exclude = excluded_indices(excluded_items(data.queries, "remove"), index)
    rows = tuple(range(0, len(data.queries), 2))
    return Problem(data, emb, exclude, unit(300), rows, 0), index


def oracle_recalls(problem: Problem, index: dict, scores: torch.Tensor, rows: list[int]):
    """{K: hit within K} per row from float64 scores (Q, G), and which rows are clear of near-ties."""
    hits, clear = {k: [] for k in (1, 5, 10, 50)}, []
    for r in rows:
        q = problem.data.queries[r]
        row = scores[r].clone()
        row[int(problem.exclude[r])] = float("-inf")
        target = row[index[q.target]]
        others = torch.cat([row[: index[q.target]], row[index[q.target] + 1 :]])
        rank = int((others >= target).sum())
        clear.append(bool(((others - target).abs() > CLEAR * max(1.0, abs(float(target)))).all()))
        for k in hits:
            hits[k].append(float(rank < k))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in hits.items()}, torch.tensor(clear)


def assert_matches_oracle(problem, index, method: str, setting: dict, oracle_scores: torch.Tensor,
                          clear_share: float = 0.75):
    rows = list(problem.tune_rows)[:600]
    scoring = SIMILARITIES.get(method).scoring(problem, setting)
    values = half_values(PROTOCOLS.get("cirr"), RULES, problem.data, scoring, rows)
    expected, clear = oracle_recalls(problem, index, oracle_scores, rows)
    assert int(clear.sum()) > clear_share * len(rows)
    for k, hit in expected.items():
        assert torch.equal(values[f"R@{k}"][clear], hit[clear]), (method, k)
    return values


def cosine64(problem: Problem) -> torch.Tensor:
    return problem.emb.composed.double() @ problem.emb.gallery.double().T


def test_inverted_softmax_ranks_as_the_float64_oracle(cirr_problem):
    problem, index = cirr_problem
    s = cosine64(problem)
    bank = problem.bank.double() @ problem.emb.gallery.double().T
    for beta in (10.0, 50.0):
        oracle = s - torch.logsumexp(beta * bank, dim=0)[None, :] / beta
        assert_matches_oracle(problem, index, "inverted-softmax", {"beta": beta}, oracle)


def test_csls_ranks_as_the_float64_oracle(cirr_problem):
    problem, index = cirr_problem
    s = cosine64(problem)
    bank = problem.bank.double() @ problem.emb.gallery.double().T
    r_bank = bank.topk(10, dim=0).values.mean(dim=0)
    oracle = 2 * s - r_bank[None, :]  # minus r(q), the same for a whole row
    assert_matches_oracle(problem, index, "csls", {"k": 10}, oracle)


def test_transductive_variants_use_the_evaluated_queries(cirr_problem):
    problem, index = cirr_problem
    s = cosine64(problem)
    oracle = s - torch.logsumexp(20.0 * s, dim=0)[None, :] / 20.0
    assert_matches_oracle(problem, index, "inverted-softmax-transductive", {"beta": 20.0}, oracle)


def test_dual_softmax_is_the_softmax_over_the_bank_and_the_query(cirr_problem):
    problem, index = cirr_problem
    s = cosine64(problem)
    bank = problem.bank.double() @ problem.emb.gallery.double().T
    t = 30.0
    # the first 40 columns by hand: s times the last entry of the softmax over (bank scores, the query's own)
    by_hand = torch.stack([s[:, g] * torch.softmax(t * torch.cat([bank[:, g].expand(len(s), -1), s[:, g : g + 1]],
                                                                  dim=1), dim=1)[:, -1] for g in range(40)], dim=1)
    lse = torch.logsumexp(t * bank, dim=0)
    formula = dual_softmax_scores(s, lse, t)
    assert torch.allclose(formula[:, :40], by_hand, rtol=0, atol=1e-12)
    ranked = ranked_scores(s, lse, t)  # the order of S: by its log where s > 0
    positive = s > 0
    assert torch.allclose(ranked[positive].exp(), formula[positive], rtol=1e-9, atol=0)
    assert bool((ranked[~positive] < ranked[positive].min()).all())
    assert_matches_oracle(problem, index, "dual-softmax", {"temperature": t}, ranked,
                          clear_share=0.4)  # targets with s <= 0 (half, at random) tie near -1000


def test_dynamic_inverted_softmax_corrects_only_queries_near_the_bank(cirr_problem):
    problem, index = cirr_problem
    s = cosine64(problem)
    bank = problem.bank.double() @ problem.emb.gallery.double().T
    active = torch.zeros(s.shape[1], dtype=torch.bool)
    active[bank.argmax(dim=1)] = True
    masked = s.clone()
    masked[torch.arange(len(s)), problem.exclude] = float("-inf")
    corrected = active[masked.argmax(dim=1)]
    oracle = torch.where(corrected[:, None], s - torch.logsumexp(30.0 * bank, dim=0)[None, :] / 30.0, s)
    assert 0 < int(corrected.sum()) < len(corrected)  # both kinds of query are exercised
    assert_matches_oracle(problem, index, "dynamic-inverted-softmax", {"beta": 30.0}, oracle)


def test_alpha_qe_and_dba_remake_the_vectors(cirr_problem):
    problem, index = cirr_problem
    q, g = problem.emb.composed.double(), problem.emb.gallery.double()
    s = q @ g.T
    s[torch.arange(len(s)), problem.exclude] = float("-inf")
    top = s.topk(3, dim=1)
    expanded = F.normalize(q + torch.einsum("qk,qkd->qd", top.values.clamp(min=0), g[top.indices]), dim=-1)
    assert_matches_oracle(problem, index, "alpha-qe", {"k": 3, "alpha": 1.0}, expanded @ g.T)
    sg = g @ g.T
    sg.fill_diagonal_(float("-inf"))
    near = sg.topk(2, dim=1)
    augmented = F.normalize(g + torch.einsum("gk,gkd->gd", near.values.clamp(min=0).pow(3), g[near.indices]), dim=-1)
    assert_matches_oracle(problem, index, "dba", {"k": 2, "alpha": 3.0}, q @ augmented.T)


def test_k_reciprocal_scores_enter_the_protocol_exactly(cirr_problem):
    """The dense path: the protocol's values from the identity gallery equal the oracle on the
    method's own float64 score matrix."""
    from harness.similarity.k_reciprocal import k_reciprocal_scores

    problem, index = cirr_problem
    scores = k_reciprocal_scores(problem.emb.composed, problem.emb.gallery, 10, 3, 0.3)
    assert_matches_oracle(problem, index, "k-reciprocal", {"k1": 10, "k2": 3, "lambda": 0.3}, scores.float().double())


def test_all_names_every_method_but_the_transductive_ones():
    methods = parse_methods(["all"])
    assert "cosine" in methods and "k-reciprocal" in methods and "learned-linear" in methods
    assert not any(m.endswith("-transductive") for m in methods)
    assert set(methods) | {m for m in SIMILARITIES.names() if m.endswith("-transductive")} == set(SIMILARITIES.names())
    with pytest.raises(HarnessError, match="did you mean|Did you mean"):
        parse_methods(["cls"])


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("similarity_run")
    return root, random_model_run(root, similarity=("all",), mix=("sweep",))


def test_a_runs_study_pairs_every_method_with_the_protocols_own_cosine(study_run):
    root, result = study_run
    block = result["similarity_study"]
    assert block["methods"] == ["cosine", *[m for m in parse_methods(["all"]) if m != "cosine"]]
    assert block["bank"]["split"] == "train" and block["headline"] == "Avg"
    labels = [r["method"] for r in block["rows"]]
    assert labels == block["methods"] + [f"mixed + {m}" for m in block["methods"]]
    cosine = block["rows"][0]
    assert all(v["difference"] == 0 for v in cosine["minus_cosine"].values())
    from harness.mixing.parts import heldout_halves

    data = SUITES.get("shapes")(root / "shapes").load("val")
    assert block["evaluation"]["queries"] == len(heldout_halves(data, 0)[1])
    assert result["protocol"]["fingerprint"]["similarity_study"].startswith("cosine, ")
    page = next((root / "out").glob("*.html")).read_text()
    assert "Similarity methods" in page and "Where the methods disagree most" in page
    md = next((root / "out").glob("*.md")).read_text()
    assert "Similarity methods (how the composed query meets the gallery)" in md


def test_study_cosine_row_equals_the_protocol_on_the_half(tmp_path):
    root = tmp_path
    result = random_model_run(root, similarity=("cosine",), similarity_bank="none", save_embeddings=True)
    from harness.evaluation.query_subset import query_subset
    from harness.mixing.parts import heldout_halves
    from harness.score import read_embeddings

    data = SUITES.get("shapes")(root / "shapes").load("val")
    arrays = read_embeddings(next((root / "out").glob("*.embeddings.safetensors")))
    order = {p: i for i, p in enumerate(arrays["pair_ids"])}
    composed = torch.as_tensor(arrays["composed"])[[order[q.pair_id] for q in data.queries]]
    emb = SplitEmbeddings(list(arrays["gallery_ids"]), torch.as_tensor(arrays["gallery"]), composed, None, None)
    _, rows = heldout_halves(data, 0)
    values = PROTOCOLS.get("cirr").query_values(*query_subset(data, emb, rows), RULES)[COMPOSED]
    row = result["similarity_study"]["rows"][0]
    for name, v in values.items():
        assert row["metrics"][name] == pytest.approx(100 * v.mean().item(), abs=1e-9)
    # harness.score gives embeddings made elsewhere the same study
    from harness.score import main

    embeddings = next((root / "out").glob("*.embeddings.safetensors"))
    assert main(["--suite", "shapes", "--data-root", str(root / "shapes"), "--embeddings", str(embeddings),
                 "--out", str(root / "scored"), "--similarity", "cosine", "alpha-qe"]) == 0
    scored = json.loads(next((root / "scored").glob("*.json")).read_text())["similarity_study"]
    assert scored["rows"][0]["metrics"] == row["metrics"] and scored["rows"][1]["method"] == "alpha-qe"
    assert main(["--suite", "shapes", "--data-root", str(root / "shapes"), "--embeddings", str(embeddings),
                 "--out", str(root / "refused"), "--similarity", "csls"]) == 2
    assert not (root / "refused").exists() or not list((root / "refused").iterdir())


def test_bank_rules_are_checked_before_any_work(tmp_path):
    with pytest.raises(HarnessError, match="evaluated split"):
        random_model_run(tmp_path, similarity=("csls",), similarity_bank="val")
    with pytest.raises(HarnessError, match="needs a query bank"):
        random_model_run(tmp_path, similarity=("csls",), similarity_bank="none")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.json"))
    result = random_model_run(tmp_path, similarity=("csls-transductive",), similarity_bank="none")
    assert [r["method"] for r in result["similarity_study"]["rows"]] == ["cosine", "csls-transductive"]


def test_image_set_scores_carry_the_offset(cirr_problem):
    """Rsubset@K ranks the image set by the same offset scores as the gallery."""
    from harness.evaluation.metrics import build_labels, subset_scores_of

    problem, index = cirr_problem
    labels = build_labels(problem.data.queries[:50], index)
    offset = torch.linspace(-1, 1, len(index))
    plain, valid = subset_scores_of(problem.emb.composed[:50], problem.emb.gallery, labels)
    shifted, _ = subset_scores_of(problem.emb.composed[:50], problem.emb.gallery, labels, offset)
    members = labels.members.clamp(min=0)
    assert torch.equal(shifted[valid], (plain + offset[members])[valid])


def test_dual_softmax_transductive_is_camoes_prior_over_the_evaluated_queries(cirr_problem):
    """CAMoE's DSL.py: s * softmax(s / temp, dim=0) over the evaluated queries, the query among them once."""
    problem, _ = cirr_problem
    s = cosine64(problem)[:300, :50]
    t = 30.0
    camoe = s * torch.softmax(t * s, dim=0)
    ranked = ranked_scores(s, torch.logsumexp(t * s, dim=0), t, with_query=False)
    positive = s > 0
    assert torch.allclose(ranked[positive].exp(), camoe[positive], rtol=1e-9, atol=0)
    scored = SIMILARITIES.get("dual-softmax-transductive").scoring(problem, {"temperature": t}).emb.composed
    full = cosine64(problem)
    expected = ranked_scores(full, torch.logsumexp(t * full, dim=0), t, with_query=False).float()
    assert torch.allclose(scored, expected, rtol=0, atol=1e-4)  # the bank statistics read fp32 scores


def test_k_reciprocal_gallery_encodings_follow_the_papers_algorithm():
    """Zhong et al. 2017, Algorithm 1 and eq. 7-10 on the gallery alone (written here from
    the paper, loop by loop): k-reciprocal sets, their expansion by the half-size sets of
    their members, exp(-d) weights, local query expansion over the k2 nearest."""
    from harness.similarity.k_reciprocal import gallery_encodings, squared_distances

    generator = torch.Generator().manual_seed(3)
    gallery = F.normalize(torch.randn(60, 8, generator=generator), dim=-1)
    k1, k2 = 6, 3
    d = squared_distances(gallery, gallery)
    d = d / d.max(dim=1, keepdim=True).values
    order = torch.argsort(d, dim=1, stable=True).tolist()

    def reciprocal(i: int, k: int) -> set[int]:
        return {j for j in order[i][: k + 1] if i in order[j][: k + 1]}

    expected = torch.zeros(60, 60, dtype=torch.float64)
    for i in range(60):
        core = reciprocal(i, k1)
        members = set(core)
        for candidate in core:
            half = reciprocal(candidate, round(k1 / 2))
            if len(half & core) > 2 / 3 * len(half):
                members |= half
        index = sorted(members)
        weights = torch.exp(-d[i, index])
        expected[i, index] = weights / weights.sum()
    expected = torch.stack([expected[order[i][:k2]].mean(0) for i in range(60)])
    encodings, _, _ = gallery_encodings(gallery, k1, k2)
    assert torch.allclose(encodings, expected, rtol=0, atol=1e-12)


def test_the_cost_benchmark_times_making_and_scoring(cirr_problem):
    """python -m harness.similarity_timing's rows (timings vary: only their form is checked)."""
    from harness.similarity_timing import method_row

    problem, _ = cirr_problem
    row = method_row("csls", problem, repeats=1)
    assert row["method"] == "csls" and row["setting"] == {"k": 1}
    assert row["make_seconds"] > 0 and row["score_seconds"] > 0 and len(row["score_repeats"]) == 1
