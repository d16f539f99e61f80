"""How a composed query meets the gallery: cosine, and the methods the seed study asked
about ("examine other approaches to compare vectors instead of cosine similarity"),
each registered once by name and chosen with `--similarity NAME ... | all`:

    python -m harness.run --similarity all                  # every method, one table
    python -m harness.run --similarity csls inverted-softmax --mix sweep

Families:
- hubness corrections with a query bank (hubness.py: inverted-softmax,
  dynamic-inverted-softmax, csls): a per-gallery-item offset, scored exactly by the
  kernels (`offset=`); the bank is another split's composed queries (bank.py), never
  the evaluated ones unless the method is named "-transductive";
- dual-softmax (dual_softmax.py) and k-reciprocal (k_reciprocal.py): a score matrix,
  scored exactly through the identity gallery (dense.py);
- query- and database-side expansion (expansion.py: alpha-qe, dba) and a learned
  linear map of the query (learned_linear.py): vectors re-made, the same kernels.

Every method is tuned on one seeded half of the evaluated queries and reported on the
other through the suite's own protocol, paired with cosine (study.py). The run's main
figures stay cosine's: the study is the results' `similarity` block.

Rooms: base.py (the contract and registry), one file per family, bank.py, dense.py,
study.py (the block), settings.py (what --similarity accepts). May import
harness.core, harness.suites, harness.evaluation, harness.mixing, harness.training.losses
and coir_kernels.
"""

from harness.similarity import (  # noqa: F401  (each module registers its methods)
    cosine,
    dual_softmax,
    expansion,
    hubness,
    k_reciprocal,
    learned_linear,
)
from harness.similarity.base import SIMILARITIES

__all__ = ["SIMILARITIES"]
