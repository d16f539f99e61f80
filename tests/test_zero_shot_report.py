"""BENCHMARKS.md's zero-shot section (harness/reports/zero_shot.py): which composer
beats both baselines beyond noise, decided as harness/compare.py decides."""

from __future__ import annotations

from pathlib import Path

from harness.evaluation.embed import COMPOSED
from harness.reports.zero_shot import beyond_noise, composer_rows, zero_shot_section


def seed_run(image_diff: float, image_interval: tuple, text_diff: float, text_interval: tuple) -> dict:
    paired = {f"{COMPOSED} minus image-only q": {"R@1": {"difference": image_diff, "interval": list(image_interval)}},
              f"{COMPOSED} minus text-only t": {"R@1": {"difference": text_diff, "interval": list(text_interval)}}}
    return {"intervals": {"paired": paired}}


def seeds_result(runs: list[dict], composer: str = "sum") -> dict:
    summary = {m: {"R@1": {"mean": 30.0, "sd": 1.0}} for m in (COMPOSED, "image-only q", "text-only t")}
    return {"kind": "seeds", "config": {"composer": composer}, "runs": runs, "summary": summary,
            "protocol": {"suite": "shapes", "fingerprint": {"suite": "shapes", "composer": composer}},
            "command": "python -m harness.run --backbone clip-tiny", "date": "today",
            "git": {"commit": "0" * 40, "dirty": False}, "packages": {"torch": "2.13.0"},
            "hardware": {"cpu": "test", "cpu_count": 2, "torch_threads": 1, "memory_gib": 24}}


def test_a_difference_holds_only_when_every_seed_and_the_spread_agree():
    steady = [seed_run(10, (5, 15), 20, (15, 25)), seed_run(11, (6, 16), 21, (16, 26)),
              seed_run(9, (4, 14), 19, (14, 24))]
    assert beyond_noise(steady, "image-only q", "R@1")[2:] == (3, True)
    one_seed_in_noise = [*steady[:2], seed_run(9, (-1, 19), 19, (14, 24))]
    assert beyond_noise(one_seed_in_noise, "image-only q", "R@1")[2:] == (2, False)
    spread = [seed_run(1, (0.5, 2), 20, (15, 25)), seed_run(20, (15, 25), 20, (15, 25)),
              seed_run(2, (1, 3), 20, (15, 25))]
    assert beyond_noise(spread, "image-only q", "R@1")[3] is False  # mean 7.7 against sd 10.7
    below = [seed_run(-10, (-15, -5), 20, (15, 25))] * 3
    assert beyond_noise(below, "image-only q", "R@1")[2:] == (3, True)  # holds, but the composer is behind
    rows = composer_rows([(Path("a.json"), seeds_result(steady)), (Path("b.json"), seeds_result(below, "image"))])
    assert [row[-1] for row in rows] == ["yes", "no"]


def test_the_section_lists_runs_over_seeds_and_the_published_rows():
    steady = [seed_run(10, (5, 15), 20, (15, 25))] * 3
    lines = zero_shot_section([(Path("a.json"), seeds_result([s.copy() for s in steady]))])
    text = "\n".join(lines)
    table_rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| shapes")]
    assert table_rows[0][:3] == ["shapes", "sum", "R@1"] and table_rows[0][-1] == "yes"
    assert "SEARLE-XL, CLIP ViT-L/14, zero-shot" in text
    assert zero_shot_section([(Path("b.json"), {"kind": "run", "config": {}})])[0].startswith("## Published")


def test_a_paper_row_is_compared_with_our_run_of_its_composer_else_sum():
    from harness.reports.zero_shot import closest_run

    ours = {("shapes", "sum"): {"composer": "sum"}, ("shapes", "pic2word"): {"composer": "pic2word"},
            ("fashioniq", "sum"): {"composer": "sum"}}
    assert closest_run(ours, {"suite": "cirr", "composer": "pic2word"})["composer"] == "pic2word"
    assert closest_run(ours, {"suite": "cirr", "composer": "searle"})["composer"] == "sum"
    assert closest_run(ours, {"suite": "fashioniq-both-orders", "composer": "pic2word"}) == {"composer": "sum"}
    assert closest_run(ours, {"suite": "circo", "composer": "sum"}) is None
