"""How multi-vector features (BLIP-2's 32 query tokens per item) meet: a named
protocol rule, and the name of the similarity that was actually computed.

CoVR-2 does not score every suite the same way (lucas-ventura/CoVR):
- `max`: the max over token pairs, einsum then max over both token axes. CIRR
  (src/test/blip2/cirr.py, cirr_val.py); the harness's kernels score it as given.
- `mean`: every token L2-normalised, the tokens averaged and NOT re-normalised, then
  the dot product. FashionIQ (src/test/blip2/fashioniq.py lines 73-75 for the query,
  99-103 for the targets), CIRCO (src/test/blip2/circo.py lines 97-100) and
  WebVid-CoVR (src/test/blip2/webvid_covr.py lines 78-79, 100-102). The token mean
  is one vector per item, so the retrieval core scores it as single vectors, exactly
  (the two-stage error bound uses the vectors' own norms).

`auto` takes the suite's protocol's rule (its `token_pooling`). Single-vector
features (BLIP) are scored as they are under any rule.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from harness.core.errors import HarnessError

POOLINGS = ("max", "mean")
CHOICES = ("auto", *POOLINGS)
UNIT_TOLERANCE = 1e-3  # |norm - 1| below which a vector counts as unit length (fp32 normalisation)
# The similarity field of a fingerprint, for the rules CoVR and CoVR-2 use (paper rows quote them).
COSINE = "cosine (one vector each)"
MAX_OVER_PAIRS = "max over token pairs (BLIP-2 query tokens x gallery tokens)"
MEAN_OF_TOKENS = "dot product of token means (tokens normalised, averaged, not re-normalised)"


def resolve(rule: str, protocol_default: str) -> str:
    """The rule a run scores with: `auto` is the protocol's."""
    if rule not in CHOICES:
        raise HarnessError(f"--token-pooling must be one of {', '.join(CHOICES)}, not {rule!r}")
    return protocol_default if rule == "auto" else rule


def token_mean(features: torch.Tensor) -> torch.Tensor:
    """(N, T, D) -> (N, D): tokens normalised, averaged, not re-normalised (CoVR-2)."""
    return F.normalize(features.float(), dim=-1).mean(dim=1)


def pooled(emb, rule: str):
    """`emb` (SplitEmbeddings) as it is scored under `rule`: `mean` replaces every
    multi-vector tensor by its token mean; `max` leaves it for max-sim scoring."""
    if rule not in POOLINGS:
        raise ValueError(f"token pooling must be one of {POOLINGS}, got {rule!r}")
    if rule == "max" or not is_multi_vector(emb):
        return emb

    def pool(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return token_mean(tensor) if tensor is not None and tensor.dim() == 3 else tensor

    return replace(emb, gallery=pool(emb.gallery), composed=pool(emb.composed), image=pool(emb.image),
                   text=pool(emb.text))


def is_multi_vector(emb) -> bool:
    return any(t is not None and t.dim() == 3 for t in (emb.gallery, emb.composed, emb.image, emb.text))


def recorded_rule(emb, rule: str) -> str | None:
    """The rule for the results: None where no feature has tokens to pool."""
    return rule if is_multi_vector(emb) else None


def similarity_name(raw, rule: str, normalised_by: str | None = None) -> str:
    """What scoring `raw` (the embeddings before pooling) under `rule` computes, for
    the composed query against the gallery: cosine only where both sides are unit
    length (or were normalised, `normalised_by` saying by whom)."""
    gallery, query = raw.gallery, raw.composed
    if gallery.dim() == 3 or query.dim() == 3:
        both = gallery.dim() == 3 and query.dim() == 3
        if rule == "mean":
            return MEAN_OF_TOKENS if both else MEAN_OF_TOKENS.replace("token means", "a token mean and a vector")
        if both:
            return MAX_OVER_PAIRS
        return "max over gallery tokens" if gallery.dim() == 3 else "max over query tokens"
    if normalised_by:
        return f"cosine (one vector each, normalised by {normalised_by})"
    if unit_length(gallery) and unit_length(query):
        return COSINE
    return "dot product (one vector each, not unit length)"


def unit_length(vectors: torch.Tensor) -> bool:
    norms = vectors.float().norm(dim=-1)
    return bool(((norms - 1).abs() <= UNIT_TOLERANCE).all())
