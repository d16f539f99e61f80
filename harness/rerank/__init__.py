"""Two-stage retrieval: the first stage's top K of each query re-scored by a
cross-encoder that reads the caption with the reference and one candidate together
(`--rerank NAME`), both stages reported on the same queries.

    python -m harness.run --rerank blip-itm                 # the embedded default, both stages
    python -m harness.run --backbone blip2 --suite fashioniq --rerank blip2-itm --rerank-k 40

Rooms: base.py (the contract, registry and settings), blip_itm.py (blip-itm,
blip2-itm), candidates.py (first-stage top K, vision tokens, stage-2 scores),
final.py (the final ranking as the protocol scores it), step.py (the results' block),
train.py (hard-negative fine-tuning through the first stage's loop). May import
harness.core, harness.suites, harness.evaluation, harness.mixing, harness.similarity,
harness.training, backbones and coir_kernels.
"""

from harness.rerank import blip_itm  # noqa: F401  (registers blip-itm and blip2-itm)
from harness.rerank.base import RERANKERS, RerankSettings

__all__ = ["RERANKERS", "RerankSettings"]
