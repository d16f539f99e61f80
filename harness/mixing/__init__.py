"""The mixed-embedding extension: m(q, t) = w0·q + w1·t + w2·f(q, t), weights on the
simplex, q the reference image's embedding, t the caption's, f the composed query
(each L2-normalised first), and two rules that aggregate the three element-wise
instead: their median and their maximum.

    python -m harness.run --mix sweep learn median max      # every mode, one table
    python -m harness.run --mix 0.1,0.1,0.8                  # fixed weights

Modes (`--mix`, any number of them):
- `sweep`: every triple of the simplex grid of step `--mix-step` (0.05: 231 triples),
  ranked in one pass by `coir_kernels.mixed_rank_counts`; each metric's best triple on the
  tuning split is reported on the evaluation split.
- `learn`: w = softmax(theta), theta fitted by the run's contrastive loss (HN-NCE, or
  InfoNCE with beta 0; harness/training/losses.py) on the tuning split's cached embeddings,
  query m against its annotated target (CIRCO's target_img_id; FashionIQ's target)
  as the gallery scores it, in-batch negatives; a few seconds on CPU.
- `w0,w1,w2`: fixed weights (non-negative, summing to 1).
- `median`, `max`: element-wise median / maximum of the normalised q, t, f.

Honest protocol: weights are chosen on a tuning split and reported on a disjoint
evaluation set. `--tune-split heldout-half` (default) splits the evaluated split's
annotations in two by a seeded hash of their pair ids (rule, sizes and the hashes of
both id lists are recorded); both halves rank against the whole gallery (FashionIQ:
each query against its category's). Each row carries a paired bootstrap interval
of its difference to f alone on the evaluation queries.
`--tune-split train` (or any other split of the suite) tunes on that split,
subsampled to `--tune-max-queries` queries (seeded, recorded), and reports on the
whole evaluated split.

Every suite, scored by its own protocol (harness/mixing/adapters, one per protocol):
CIRR and shapes (R@K, Rsubset@K, Avg), WebVid-CoVR (R@K on the target videos),
FashionIQ (R@10 and R@50 per category, each query ranked within its category's
gallery; "avg R@K" and Avg; the phrasings of one annotation merged part by part as
the protocol merges them, and never split between the halves) and CIRCO (mAP@K
over every ground truth and R@K on the target). Each metric the suite reports is
tuned on its own: the sweep gives every metric of every triple, each metric's best
triple on the tuning set is reported on the evaluation set. A sweep entry is what
the protocol's `evaluate` and `query_values` give for that triple's mixed query on
the same queries, and "f alone" is the protocol's composed figure on them
(tests/test_mix_protocols.py).

What is normalised. q, t and f are each L2-normalised before mixing: that is what
the weights mean (shares of unit vectors), and a query's own scale never changes
its ranking, so each part alone ranks exactly as the protocol ranks it. The gallery
is scored as the protocol scores it and never re-normalised here. For single-vector
BLIP features it is unit length already; under mean token pooling (below) its rows
are token means whose norms are part of every score, and re-normalising them would
rank differently from the run's own metrics. `coir_kernels.mixed_rank_counts`
normalises the gallery it is given, so it receives the gallery lifted to rows of one
norm (adapters/base.py `lifted`), which divides every score by the same constant.

Multi-vector features (BLIP-2's 32 query tokens). Under `--token-pooling mean` (the
FashionIQ, CIRCO and WebVid-CoVR protocols' rule) each item is scored as one
vector, its normalised tokens averaged and not re-normalised
(harness/evaluation/token_pooling.py): mixing uses those same pooled embeddings
(q the reference's token mean, t the text vector, f the composed tokens' mean).
Under `max` (CIRR's rule: the max over token pairs) mixing is refused before
embedding: max-sim is not linear, the score of w0·q + w1·t + w2·f is not
w0·s(q) + w1·s(t) + w2·s(f), so no triple can be ranked from the three parts' scores
(each would need its own max-sim scoring of the gallery, 231 of them for a sweep),
and q (32 image tokens), t (one text vector) and f (32 composed tokens) are not one
kind of vector to average.

Rooms: modes.py (what --mix accepts, checked before any work), grid.py (the simplex,
mixing and element-wise rules), parts.py (tuning and evaluation sets), adapters/
(per protocol: the query blocks to count and the metrics from the counts), sweep.py
(every metric of every triple; direct rows through the protocol), learn.py (weights
fitted by the loss), step.py (a run's mixing block), heatmap.py. May import
harness.core, harness.suites, harness.evaluation, harness.training.losses and coir_kernels.
"""
