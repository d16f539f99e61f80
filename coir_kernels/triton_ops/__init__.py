"""The fused Triton kernels of the retrieval core, one module per operation, each
with its launcher: `rank_counts.py` (single vectors and BLIP-2's max-sim),
`mixed.py` (every weight triple of a mixing sweep in one pass), `topk.py` (top-K
with exclusion), and `tiles.py` (the score tile, blocks, operands and the launch
plan they share). `coir_kernels/reference.py` is the torch reference they match;
`coir_kernels/__init__.py` dispatches to them.

Triton is imported by this package only; `coir_kernels/__init__.py` imports it lazily,
so TRITON_INTERPRET can still be set after `import coir_kernels`. The interpreter
setting is read when the kernels are decorated, i.e. when this package is imported.
"""

from coir_kernels.triton_ops.mixed import mixed_rank_counts
from coir_kernels.triton_ops.rank_counts import target_rank_counts
from coir_kernels.triton_ops.tiles import (
           INTERPRETED,
           LIBRARY_INTERPRETED,
           MAX_TOKENS,
           block_config,
           supports_tokens,
)
from coir_kernels.triton_ops.topk import MAX_K, topk_excluding

__all__ = ["INTERPRETED", "LIBRARY_INTERPRETED", "MAX_K", "MAX_TOKENS", "block_config", "mixed_rank_counts",
           "supports_tokens", "target_rank_counts", "topk_excluding"]
