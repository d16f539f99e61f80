"""A computed row of the scoring plan, not a measured one: how a gallery too large for
one device splits over N of them (harness/evaluation/sharded.py: contiguous shards,
counts summed, top-K lists merged), with each rank's bytes and its time by the
roofline (benches/roofline.py `t_min`) from the machine's stated figures.

Per rank r of N: G_r = ceil(G / N) gallery rows (the largest shard, the one the ranks
wait for). It holds its shard (G_r D bytes of the dtype) and the queries (Q D), and
scores them as one device scores a G_r-row gallery: T_rank = max(2 Q G_r D / peak,
moved / bandwidth). What the ranks exchange (harness/evaluation/sharded.py): every
positive's row, gathered in fp32 (Q P D x 4 bytes), the counts summed (greater and
equal, int64: Q P x 16 bytes) and, for top-K, each rank's K candidates (score fp32 and
index int64: Q K x 12 bytes) gathered to every rank; moving them at the stated link
rate is T_exchange, and the whole gallery on one device is T_one for comparison.
"""

from __future__ import annotations

import math

from benches.roofline import MACHINES, t_min

COMPUTED = "computed-shards"  # the provider name of a computed row in benches/scoring_suite.py
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
# device-to-device link, bytes/s each way: NVLink 4 (H100 and H200 SXM), 900 GB/s both ways together
LINKS = {"H100": (450e9, "NVIDIA H100 SXM datasheet: NVLink 900 GB/s bidirectional"),
         "H200": (450e9, "NVIDIA H200 SXM datasheet: NVLink 900 GB/s bidirectional")}


def computed_row(queries: int, gallery: int, ranks: int, machine: str, dim: int = 256, dtype: str = "fp16",
                 positives: int = 1, k: int = 50, **_ignored) -> dict:
    """The row's figures: per rank, its rows, bytes held and moved, and the roofline
    floor of its scoring; what the ranks exchange; the whole gallery on one device."""
    if machine not in LINKS or ranks < 1 or gallery < ranks:
        raise ValueError(f"a computed row needs a machine of {sorted(LINKS)}, ranks >= 1 and gallery >= ranks")
    element = ELEMENT_BYTES[dtype]
    rows = math.ceil(gallery / ranks)
    outputs = queries * positives * 16 + queries * k * 12  # rank counts and the top-K candidates
    per_rank = t_min(queries, rows, dim, element, outputs, machine)
    one = t_min(queries, gallery, dim, element, outputs, machine)
    exchanged = queries * positives * dim * 4 + queries * positives * 16 + (ranks - 1) * queries * k * 12
    link, link_source = LINKS[machine]
    exchange_s = exchanged / link if ranks > 1 else 0.0
    return {
        "provider": COMPUTED, "computed": True, "machine": machine, "queries": queries, "gallery": gallery,
        "ranks": ranks, "dim": dim, "dtype": dtype, "positives": positives, "k": k,
        "gallery_rows_per_rank": rows, "shard_bytes_per_rank": rows * dim * element,
        # its shard, the queries, the gathered positive rows (fp32), the merged candidates and the counts
        "bytes_held_per_rank": (rows + queries) * dim * element + queries * positives * dim * 4
        + ranks * queries * k * 12 + queries * positives * 16,
        "roofline_per_rank": per_rank, "exchange_bytes_per_rank": exchanged, "exchange_s": exchange_s,
        "seconds_per_rank": per_rank["t_min_s"] + exchange_s, "one_device": one,
        "speedup_over_one_device": one["t_min_s"] / (per_rank["t_min_s"] + exchange_s),
        "limits_source": f"{MACHINES[machine][2]}; {link_source}",
    }
