"""The mixed-embedding extension: m(q, t) = w0·q + w1·t + w2·f(q, t), weights on the
simplex, q the reference image's embedding, t the caption's, f the composed query
(each L2-normalised first), and two rules that aggregate the three element-wise
instead: their median and their maximum.

    python -m harness.run --mix sweep learn median max      # every mode, one table
    python -m harness.run --mix 0.1,0.1,0.8                  # fixed weights

Modes (`--mix`, any number of them):
- `sweep`: every triple of the simplex grid of step `--mix-step` (0.05: 231 triples),
  ranked in one pass by `kernels.mixed_rank_counts`; each metric's best triple on the
  tuning split is reported on the evaluation split.
- `learn`: w = softmax(theta), theta fitted by the run's contrastive loss (HN-NCE, or
  InfoNCE with beta 0; harness/training/losses.py) on the tuning split's cached embeddings,
  query m against its target, in-batch negatives; a few seconds on CPU.
- `w0,w1,w2`: fixed weights (non-negative, summing to 1).
- `median`, `max`: element-wise median / maximum of the normalised q, t, f.

Honest protocol: weights are chosen on a tuning split and reported on a disjoint
evaluation set. `--tune-split heldout-half` (default) splits the evaluated split's
queries in two by a seeded hash of their pair ids (rule, sizes and the hashes of
both id lists are recorded); both halves rank against the whole gallery.
`--tune-split train` (or any other split of the suite) tunes on that split,
subsampled to `--tune-max-queries` queries (seeded, recorded), and reports on the
whole evaluated split.

Mixing is defined for single-vector features only. BLIP-2's features are 32 tokens
scored by the max over token pairs, and max-sim is not linear: the score of
w0·q + w1·t + w2·f is not w0·s(q) + w1·s(t) + w2·s(f), so no triple can be ranked from
the three parts' scores (each would need its own max-sim scoring of the gallery,
231 of them for a sweep), and q (32 image tokens), t (one text vector) and f
(32 composed tokens) are not one kind of vector to average. A BLIP-2 run with --mix
stops before embedding, saying so.

Rooms: modes.py (what --mix accepts, checked before any work), grid.py (the simplex,
mixing and element-wise rules), parts.py (tuning and evaluation sets), sweep.py (every
metric of every triple from rank counts), learn.py (weights fitted by the loss),
step.py (a run's mixing block), heatmap.py. May import harness.core, harness.suites,
harness.evaluation, harness.training.losses and kernels.
"""
