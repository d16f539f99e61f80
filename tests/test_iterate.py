"""--iterate: an epoch over every annotation row, or over the distinct targets with
one seeded row each, as CoVR's WebVid-CoVR config (harness/training/iterate.py)."""

from __future__ import annotations

import torch

from harness.suites import Query, SplitData
from harness.training.iterate import draw, units
from harness.training.loop import BatchPlan
from harness.training.settings import TrainSettings


def _queries() -> list[Query]:
    # 12 rows over 5 targets: t0 x4, t1 x3, t2 x2, t3 x2, t4 x1
    targets = ["t0"] * 4 + ["t1"] * 3 + ["t2"] * 2 + ["t3"] * 2 + ["t4"]
    return [Query(i, f"r{i}", f"edit {i}", t) for i, t in enumerate(targets)]


def _settings(iterate: str) -> TrainSettings:
    return TrainSettings(epochs=2, batch_size=4, lr=1e-3, weight_decay=0.0, warmup_steps=0, grad_clip=1.0,
                         temperature=0.07, hnnce_alpha=1.0, hnnce_beta=0.5, train_vision=False,
                         max_train_queries=None, loss="hn-nce", schedule="step", deepspeed=None,
                         grad_cache_chunk=None, checkpoint_every=0, resume=False, seed=0, iterate=iterate)


def test_targets_visit_each_target_once_per_epoch():
    data = SplitData("shapes", "train", _queries(), [], {}, True, "")
    plan = BatchPlan.of(data, _settings("targets"))
    assert len(plan.units) == 5 and plan.steps_per_epoch == 1  # 5 targets, batch 4
    rows = BatchPlan.of(data, _settings("rows"))
    assert len(rows.units) == 12 and rows.steps_per_epoch == 3
    generator = torch.Generator().manual_seed(0)
    seen = [tuple(q.pair_id for q in draw(plan.units, generator)) for _ in range(20)]
    assert all(sorted({_queries()[p].target for p in epoch}) == ["t0", "t1", "t2", "t3", "t4"] for epoch in seen)
    assert len(set(seen)) > 1  # another row of a repeated target in another epoch
    again = torch.Generator().manual_seed(0)
    assert seen == [tuple(q.pair_id for q in draw(plan.units, again)) for _ in range(20)]  # seeded


def test_rows_draw_nothing_from_the_order_stream():
    generator = torch.Generator().manual_seed(3)
    before = generator.get_state()
    assert draw(units(_queries(), "rows"), generator) == _queries()
    assert torch.equal(generator.get_state(), before)
