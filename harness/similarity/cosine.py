"""`cosine`: the protocol's own score (the dot product of the vectors as the run made
them: unit vectors for BLIP, CoVR-2's token mean for BLIP-2), the row every other
method is paired with."""

from __future__ import annotations

from harness.similarity.base import SIMILARITIES, Problem, Scoring, composed_only


class Cosine:
    name = "cosine"
    needs_bank = False
    summary = "the protocol's own score, the row every method is paired with"

    def settings(self, problem: Problem) -> list[dict]:
        return [{}]

    def scoring(self, problem: Problem, setting: dict) -> Scoring:
        return Scoring(composed_only(problem.emb))


SIMILARITIES.register("cosine")(Cosine())
