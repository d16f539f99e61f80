"""Where the query's own reference stands in its ranking: a named protocol rule.

- `remove` (default): the reference (a WebVid-CoVR query frame's video) takes no
  part in its query's ranking, and a target equal to it is a miss. CoVR does this by
  score: -10 on FashionIQ (src/test/blip/fashioniq.py lines 100-102,
  src/test/blip2/fashioniq.py lines 106-109), -100 on CIRCO (src/test/blip/circo.py
  lines 91-94, src/test/blip2/circo.py lines 102-105), -10 on
  WebVid-CoVR (src/test/blip/webvid_covr.py lines 96-100); CIRR's every peer
  removes it (CLIP4Cir's compute_cirr_val_metrics, CIRPLANT's evaluation).
- `keep`: the reference is ranked like any other item, as CLIP4Cir and SPRC score
  FashionIQ (src/validate.py lines 21-57; SPRC src/validate_blip.py lines 24-57),
  SEARLE and MagicLens score CIRCO (SEARLE src/validate.py lines 297-364; magiclens
  inference.py lines 127-133), and as mteb's composed tasks were reported to (its
  issue #5155, cited by this project's issue; not found in the index here; mteb
  PR 1154 added an optional `skip_first_result`). A reference ranks high on a
  composed query, so `keep` lowers recall where the reference is in the gallery.
- `covr-order` (WebVid-CoVR only): CoVR's own mask as its code places it on a CSV
  that is not sorted by `pth2`. src/data/webvid_covr.py takes the query order from
  `df[iterate].unique()` (line 260) before `sort_values` (line 264), but the
  reference and target maps it masks with (`pairid2ref`, `pairid2tar`, lines
  268-279) from the sorted frame; src/test/blip/webvid_covr.py (lines 75-76,
  96-100) then masks, for query i, the column j whose sorted-order target equals the
  sorted-order row i's reference. On a CSV sorted by `pth2` this is `remove`; on
  another order the mask lands on other videos. This rule reproduces CoVR's printed
  numbers on such a file; `remove` is the protocol CoVR meant.

Each protocol lists the rules it accepts (`reference_rules`); CIRR's is `remove`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.core.errors import HarnessError

RULES = ("remove", "keep", "covr-order")


def check(rule: str, protocol) -> None:
    """An error naming the accepted rules unless `protocol` takes `rule`."""
    accepted = getattr(protocol, "reference_rules", ("remove",))
    if rule not in RULES:
        raise HarnessError(f"--reference must be one of {', '.join(RULES)}, not {rule!r}")
    if rule not in accepted:
        raise HarnessError(f"--reference {rule} does not apply to the {protocol.name} protocol, which takes "
                           f"{', '.join(accepted)}")


def recorded(rule: str) -> bool | str:
    """The protocol block's and fingerprint's `reference_removed`: True, False, or the rule's name."""
    return {"remove": True, "keep": False}.get(rule, rule)


def reference_of(query) -> str:
    """The gallery item a query's reference is (a WebVid-CoVR frame's video)."""
    return query.reference_item or query.reference


def excluded_items(queries: Sequence, rule: str) -> list[str | None]:
    """The gallery item taken out of each query's ranking (None: nothing)."""
    if rule == "remove":
        return [reference_of(q) for q in queries]
    if rule == "keep":
        return [None] * len(queries)
    if rule == "covr-order":
        return covr_order_masked(queries)
    raise ValueError(f"reference rule must be one of {RULES}, got {rule!r}")


def covr_order_masked(queries: Sequence) -> list[str | None]:
    """The item CoVR's WebVid-CoVR evaluation masks for each query (module docstring):
    the target of the row j, in file order, whose target in `pth2` order equals the
    reference of row i in `pth2` order."""
    targets = [q.target for q in queries]
    if len(set(targets)) != len(targets):
        raise HarnessError("--reference covr-order reproduces CoVR's test-split mask, which needs one row per "
                           "target video (CoVR asserts it: src/data/webvid_covr.py lines 283-286); this split "
                           "repeats targets: use --reference remove")
    by_target = sorted(range(len(queries)), key=lambda i: targets[i])  # pandas sort_values, unique keys
    sorted_position = {targets[row]: position for position, row in enumerate(by_target)}
    masked = []
    for i in range(len(queries)):
        j = sorted_position.get(reference_of(queries[by_target[i]]))
        masked.append(targets[j] if j is not None else None)
    return masked


def excluded_indices(items: Sequence[str | None], gallery_index: dict[str, int]) -> torch.Tensor:
    """`excluded_items` as indices into a gallery (id -> row), -1 for none or not in it."""
    return torch.tensor([gallery_index.get(item, -1) if item is not None else -1 for item in items],
                        dtype=torch.long)
