"""The EgoCVR protocol (Hummel et al., ECCV 2024; ExplainableML/EgoCVR at fc08f95,
egocvr_retrieval.py), two settings from one embedding of the pool
(harness/evaluation/candidate_galleries.py):

- `global`: each query ranks its `global_idx` clips, Recall@{1,5,10}; `local`: its
  `local_idx` clips (clips of the query's own video), Recall@{1,2,3} (line 147);
  the lists come from egocvr_annotations_gallery.csv (lines 110, 383-385), or are
  derived when that file is absent (harness/suites/egocvr.py says how, and the
  protocol block records which);
- a query counts a hit at K when any of its targets (target_clip_ids, several for
  289 of the 2,295 queries) is within its first K candidates (lines 267-300);
- a query with fewer than 2 candidates is left out of that setting (lines 91,
  273-275) and the recall is over the queries kept (line 302);
- scores are cosine similarities (both sides L2-normalised, lines 229-235); ties fall
  where the run's tie rule puts them (EgoCVR's code takes torch.topk's order, which
  no rule fixes);
- the query clip itself: EgoCVR's code ranks whatever its lists hold and removes
  nothing (lines 267-271), and 17 real queries ("No change required.") list the
  query clip among their targets (9 as the only one). `--reference keep` (the suite's
  default, `default_reference`) does the same; `remove` takes the query clip out of
  every ranking, which makes those targets misses.

The per-query records' top-10 lists are the global setting's, ties in pool order.
There is no evaluation server: write_server_files refuses.
"""

from __future__ import annotations

from pathlib import Path

import torch

import coir_kernels
from harness.core.errors import HarnessError
from harness.evaluation import candidate_galleries as cg
from harness.evaluation.embed import methods_of
from harness.evaluation.paper import PAPER_EGOCVR
from harness.evaluation.protocols.base import PROTOCOLS, ScoringRules
from harness.evaluation.protocols.tables import (
    interval_table,
    method_rows,
    paper_note,
    paper_rows,
    table,
)
from harness.evaluation.reference_rule import recorded
from harness.evaluation.validate import check_embeddings

SETTINGS = {"global": (1, 5, 10), "local": (1, 2, 3)}  # egocvr_retrieval.py line 147
MIN_GALLERY = 2  # --min_gallery_size, egocvr_retrieval.py line 91
METRICS = [f"{setting} R@{k}" for setting, ks in SETTINGS.items() for k in ks]
TOP = 10


def _settings(data, rules: ScoringRules) -> dict[str, cg.SettingLabels]:
    missing = [s for s in SETTINGS if s not in data.candidates]
    if missing:
        raise HarnessError(f"{data.suite}/{data.split} has no {', '.join(missing)} galleries for the egocvr protocol")
    return {s: cg.setting_labels(data, s, rules.reference, MIN_GALLERY) for s in SETTINGS}


class EgoCVRProtocol:
    name = "egocvr"
    reference_rules = ("keep", "remove")  # keep first: the suite's default
    headline_metric = "global R@1"
    token_pooling = "mean"  # as the harness's other video protocols (CoVR-2's webvid_covr.py)

    def describe(self, data, rules: ScoringRules) -> dict:
        settings = _settings(data, rules)
        return {"scoring": self.name, "reference_removed": recorded(rules.reference), "tie_rule": rules.tie_rule,
                "min_gallery_size": MIN_GALLERY, "video": data.provenance.get("video"),
                "galleries": data.provenance.get("galleries"),
                "settings": {name: {"recall_ks": list(SETTINGS[name]),
                                    "mean_candidates": round(float(cg.taking_part(s.candidates, s.exclude)
                                                                   .double().mean()), 2),
                                    "queries_kept": int(s.kept.sum())}
                             for name, s in settings.items()}}

    def _hits(self, data, emb, rules: ScoringRules):
        """{method: {setting: ({K: hits}, counts)}} and the settings."""
        check_embeddings(data, emb, methods_of(emb))
        settings = _settings(data, rules)
        out = {method: {name: cg.setting_hits(getattr(emb, attr), emb.gallery, s, rules.tie_rule, SETTINGS[name],
                                              emb.gallery_offset)
                        for name, s in settings.items()}
               for method, attr in methods_of(emb).items()}
        return out, settings

    def query_values(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, torch.Tensor]]:
        hits, settings = self._hits(data, emb, rules)
        return {method: {f"{name} R@{k}": cg.query_shares(h[0][k], settings[name].kept)
                         for name, h in per_setting.items() for k in SETTINGS[name]}
                for method, per_setting in hits.items()}

    def evaluate(self, data, emb, rules: ScoringRules) -> dict[str, dict[str, float]]:
        hits, settings = self._hits(data, emb, rules)
        return {method: {f"{name} R@{k}": cg.recall(h[0][k], settings[name].kept)
                         for name, h in per_setting.items() for k in SETTINGS[name]}
                for method, per_setting in hits.items()}

    def query_records(self, data, emb, rules: ScoringRules) -> list[dict]:
        hits, settings = self._hits(data, emb, rules)
        ids = emb.gallery_ids
        records = [{"pair_id": q.pair_id, "caption": q.caption, "reference": q.reference, "target": q.target,
                    "targets": list(q.ground_truths or (q.target,)), "methods": {}} for q in data.queries]
        for method, attr in methods_of(emb).items():
            ranks = {name: cg.best_rank(counts, settings[name], rules.tie_rule)
                     for name, (_, counts) in hits[method].items()}
            values = {f"{name} R@{k}": cg.query_shares(h[0][k], settings[name].kept).tolist()
                      for name, h in hits[method].items() for k in SETTINGS[name]}
            g = settings["global"]
            scores, top = coir_kernels.candidate_topk(getattr(emb, attr), emb.gallery, g.candidates, TOP, g.exclude,
                                                      offset=emb.gallery_offset)
            for i, record in enumerate(records):
                record["methods"][method] = {
                    "target_rank": ranks["global"][i], "local_rank": ranks["local"][i],
                    "top": [ids[j] for j in top[i].tolist() if j >= 0],
                    "top_scores": [round(s, 6) for s, j in zip(scores[i].tolist(), top[i].tolist()) if j >= 0],
                    "values": {name: v[i] for name, v in values.items()},
                }
        return records

    def write_server_files(self, data, emb, rules: ScoringRules, directory: Path, stem: str) -> dict[str, str]:
        raise HarnessError("EgoCVR has no evaluation server: its queries have targets and are scored")

    def metrics_table(self, result: dict) -> str:
        settings = result["protocol"].get("settings", {})
        chance = {}
        for name, ks in SETTINGS.items():
            size = max(1.0, settings.get(name, {}).get("mean_candidates", 1.0))
            chance.update({f"{name} R@{k}": min(100.0, 100.0 * k / size) for k in ks})
        rows = method_rows(result, METRICS, chance) + paper_rows(PAPER_EGOCVR, METRICS)
        intervals = interval_table(result, METRICS)
        note = paper_note(result, PAPER_EGOCVR) if PAPER_EGOCVR else NO_PAPER_ROWS
        return table(rows, METRICS) + "\n\n" + note + (" " + CHANCE_NOTE) + ("\n\n" + intervals if intervals else "")


NO_PAPER_ROWS = ("No EgoCVR paper rows yet: the paper's table could not be read from this machine "
                 "(harness/evaluation/paper.py, PAPER_EGOCVR).")
CHANCE_NOTE = "Chance is K over the mean number of candidates per query (one target)."


PROTOCOLS.register("egocvr")(EgoCVRProtocol())
