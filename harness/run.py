"""python -m harness.run: evaluate (and fine-tune) a backbone on a suite.

With no arguments it runs the embedded default: blip-tiny fine-tuned with HN-NCE
on the generated `shapes` suite, then evaluated on shapes val with the CIRR
protocol. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys

from backbones import BACKBONES, CHECKPOINT_FORMATS
from backbones.composers import COMPOSERS
from harness.config import RunConfig
from harness.core.errors import HarnessError
from harness.core.precision import PRECISIONS
from harness.evaluation import reference_rule, token_pooling
from harness.evaluation.metrics import CONVENTIONS, TIE_RULES
from harness.suites import SUITES
from harness.suites.captions import CLEANINGS
from harness.suites.circo import QUERY_TEMPLATES
from harness.suites.cirr_layout import GALLERIES
from harness.suites.webvid_covr import POOLINGS, QUERY_FRAMES
from harness.training.iterate import ITERATE
from harness.training.losses import LOSSES
from harness.training.recipes import RECIPES, SCHEDULES

EXAMPLES = """
examples:
  python -m harness.run                                   # blip-tiny on shapes, trained then evaluated
  python -m harness.run --seeds 0 1 2 3 4                 # the same over five seeds: mean ± sd, intervals
  python -m harness.run --backbone blip-large --suite cirr --data-root /data/CIRR
  python -m harness.run --backbone blip-base --suite cirr --data-root /data/CIRR --split test1
  python -m harness.run --backbone blip-tiny --checkpoint results/checkpoints/<run> --no-train
  python -m harness.run --suite fashioniq                 # generated FashionIQ: trained on train, R@10/50 on val
  python -m harness.run --suite circo                     # generated CIRCO, zero-shot after shapes training
  python -m harness.run --suite webvid-covr               # generated clips: trained on train, R@K on test
  python -m harness.run --mix sweep learn median max     # mixed embeddings, tuned on half of val
  python -m harness.run --rerank blip-itm                 # two stages: the top 50 re-ranked by BLIP's ITM head
  python -m harness.run --backbone clip-tiny --suite circo --composer pic2word   # zero-shot CLIP, offline
  python -m harness.run --backbone clip-large-patch14 --suite cirr --data-root /data/CIRR --composer combiner
  python -m harness.run --backbone blip-large --suite circo --data-root /data/CIRCO --split test --no-train
  python -m harness.run --backbone blip-large --suite cirr --data-root /data/CIRR \\
      --train --grad-cache-chunk 64                      # CoVR recipe, batch 1024 on one GPU
  torchrun --standalone --nproc_per_node=8 -m harness.run --backbone blip-large --suite cirr \\
      --data-root /data/CIRR --train                     # 8 GPUs x 128, ZeRO-2, fp16
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.run",
        description=__doc__,
        epilog=(
            f"registered backbones: {', '.join(BACKBONES.names())}\n"
            f"registered suites: {', '.join(SUITES.names())}\n"
            f"recipes: {', '.join(RECIPES)}\n" + EXAMPLES
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # None means "not given": RunConfig.from_cli fills it from the recipe or defaults.
    for add_group in (_what_to_run, _fine_tuning, _evaluation, _mixing, _similarity, _reranking):
        add_group(parser.add_argument)
    return parser


def _what_to_run(add) -> None:
    add("--backbone", default="blip-tiny",
        help=f"model to evaluate: {', '.join(BACKBONES.names())} (default blip-tiny; the clip-* backbones "
             "compose with --composer)")
    add("--composer",
        help=f"CLIP backbones: how the reference image and the text make the query: {', '.join(COMPOSERS.names())} "
             "(default sum, CLIP4Cir's baseline; combiner: CLIP4Cir's Combiner trained on the suite's train split; "
             "pic2word: Pic2Word's pseudo word, trained on images alone, zero-shot); CLIP stays frozen")
    add("--suite", default="shapes",
        help=f"dataset: {', '.join(SUITES.names())} (default shapes, generated offline)")
    add("--split",
        help="split to evaluate: the suite's default (val; webvid-covr, dense-webvid-covr, egocvr: test; "
             "genecis: all, or one of its four tasks) or the test split (server files: cirr test1, circo test)")
    add("--train-split", help="split to fine-tune on (default train)")
    add("--data-root", help="dataset folder in the suite's layout (shapes: generated if empty; "
                            "fashioniq, circo: generated into the cache when not given)")
    add("--checkpoint",
        help="transformers directory, hub id, or original checkpoint file (default: the backbone's)")
    add("--checkpoint-format", choices=CHECKPOINT_FORMATS,
        help="format of a checkpoint file: blip (BLIP .pth), covr (CoVR .ckpt), lavis (LAVIS BLIP-2 .pth), "
             "covr2 (CoVR-2 .ckpt); default by file kind")
    add("--tokenizer", help="tokenizer directory or hub id for original checkpoint files "
                            "(default bert-base-uncased)")
    add("--model-config", help="config.json giving the architecture of an original checkpoint file")
    add("--out", default="results", help="folder for results JSON, tables, server files, checkpoints")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    add("--precision", choices=PRECISIONS,
        help="auto (the default: evaluation in fp32, as CoVR and CoVR-2 train and evaluate; training in the "
             "recipe's precision: fp32, but the tiny recipe trains under bf16 autocast where the CPU has "
             "avx512_bf16 or AMX), fp32, fp16 / bf16 (autocast, for speed), lavis (BLIP-2's vision tower in "
             "fp16 as LAVIS evaluates it); a name applies to training and evaluation; fp16 and lavis need CUDA")
    add("--seed", type=int, default=0)
    add("--seeds", type=int, nargs="+", metavar="SEED",
        help="run the whole pipeline once per seed and write one results file over them "
             "(every seed's metrics and intervals, mean ± sd); e.g. --seeds 0 1 2 3 4")
    add("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def _fine_tuning(add) -> None:
    add("--train", action=argparse.BooleanOptionalAction,
        help="fine-tune before evaluating (default: blip-tiny and clip-tiny from random weights, and a "
             "composer that trains)")
    add("--recipe", choices=list(RECIPES), help="fine-tuning recipe (default: tiny for blip-tiny, clip-tiny's "
                                                "pre-training for clip-tiny, the composer's own for combiner and "
                                                "pic2word, else covr)")
    add("--epochs", type=int)
    add("--batch-size", type=int)
    add("--lr", type=float)
    add("--weight-decay", type=float)
    add("--warmup-steps", type=int)
    add("--grad-clip", type=float)
    add("--temperature", type=float)
    add("--hnnce-alpha", type=float)
    add("--hnnce-beta", type=float)
    add("--train-vision", action=argparse.BooleanOptionalAction,
        help="train the vision tower too (default: from the recipe; CoVR freezes it)")
    add("--max-train-queries", type=int, help="use only the first N training queries")
    add("--iterate", choices=ITERATE,
        help="what an epoch goes over: rows (every annotation row; default) or targets (one seeded row per "
             "target, as CoVR's WebVid-CoVR config, iterate: pth2)")
    add("--loss", choices=list(LOSSES),
        help="hn-nce (as defined), covr-compat (CoVR's released loss, quirk included), clip4cir (CLIP4Cir's "
             "Combiner loss, one way) or pic2word (Pic2Word's, the two ways averaged); default: the recipe's")
    add("--schedule", choices=list(SCHEDULES),
        help="step (cosine per step after warm-up), epoch (cosine per epoch, CoVR) or constant (CLIP4Cir's "
             "Combiner); default: from the recipe")
    add("--deepspeed", metavar="CONFIG",
        help="train through DeepSpeed with this ZeRO config (configs/deepspeed/zero{1,2}.json; "
             "default: zero2 for the covr recipe, none for tiny; 'none' forces the plain engine)")
    add("--grad-cache-chunk", type=int, metavar="C",
        help="gradient caching: embed each rank's batch C pairs at a time (memory of C, gradients of the batch)")
    add("--checkpoint-every", type=int, metavar="N",
        help="also write the resumable training state every N steps (default: at epoch ends only)")
    add("--resume", action=argparse.BooleanOptionalAction,
        help="continue an interrupted fine-tuning of the same configuration from its training state")


def _evaluation(add) -> None:
    add("--eval-batch-size", type=int)
    add("--cache", action=argparse.BooleanOptionalAction,
        help="reuse embeddings of the same weights, preprocessing and data (default on)")
    add("--convention", choices=CONVENTIONS, help="CIRR scoring convention (default covr)")
    add("--tie-rule", choices=TIE_RULES, help="how equal scores rank (default pessimistic)")
    add("--caption-cleaning", choices=CLEANINGS,
        help="caption text before it reaches the model: covr (CoVR's pre_caption: lower-case, "
             "punctuation to spaces, 30 words; the default) or none")
    add("--gallery-model", metavar="auto|loaded|CHECKPOINT",
        help="the model whose features the gallery is scored with: auto (default: BLIP-2 after fine-tuning "
             "keeps its base model's gallery, as CoVR-2), loaded (the evaluated model), or a checkpoint")
    add("--save-embeddings", action="store_true", default=None,
        help="also write <run>.embeddings.safetensors: gallery, composed and baseline embeddings with their ids, "
             "the format python -m harness.score reads")
    add("--video-query-frame", choices=QUERY_FRAMES,
        help="video suites: the reference video's frame the query uses, middle (CoVR's default) or random "
             "(seeded by the pair id)")
    add("--video-pooling", choices=POOLINGS,
        help="video suites: how a target video's sampled frames pool into its embedding: query (CoVR's "
             "default, softmax(scores / 0.1) of the annotation), mean, or the middle frame")
    add("--text-length", type=int, metavar="TOKENS",
        help="dense-webvid-covr: the modification text's token length at evaluation (default 64, BSE-CoVR's "
             "src/test/webvid_covr.py); recorded in the protocol and its fingerprint")
    add("--reference", choices=reference_rule.RULES,
        help="where the query's reference stands: remove (CoVR; the default, but keep on egocvr and genecis, "
             "whose code removes nothing), keep (CLIP4Cir, SPRC on FashionIQ; "
             "SEARLE, MagicLens on CIRCO; mteb), covr-order (WebVid-CoVR: CoVR's mask as its code places it on "
             "a CSV not sorted by pth2); CIRR takes remove only")
    add("--token-pooling", choices=token_pooling.CHOICES,
        help="multi-vector features (BLIP-2): auto (default: CoVR-2's rule for the suite, max on CIRR, mean on "
             "FashionIQ, CIRCO, WebVid-CoVR), max (max over token pairs), mean (tokens normalised, averaged, "
             "not re-normalised, dot product)")
    add("--query-template", choices=QUERY_TEMPLATES,
        help="circo: the query text, caption (the relative caption, CoVR; default) or shared-concept "
             "(\"find {shared_concept} but {relative_caption}\", MagicLens, BGE-VL)")
    add("--gallery", choices=GALLERIES,
        help="split (the split file's images, the official protocol; default) or folder (every image of "
             "the split's folder, as CoVR's val script); CIRR-layout suites")


def _mixing(add) -> None:
    add("--mix", nargs="+", metavar="MODE",
        help="mixed embeddings m = w0*q + w1*t + w2*f (harness/mixing/__init__.py), any of: sweep (simplex grid), "
             "learn (softmax weights fitted on the tuning split), w0,w1,w2 (fixed), median, max "
             "(element-wise); every suite, scored by its own protocol; BLIP-2 under --token-pooling mean only")
    add("--mix-step", type=float, help="grid step of --mix sweep (default 0.05: 231 triples)")
    add("--tune-split",
        help="where --mix chooses weights: heldout-half (default: a seeded half of the evaluated "
             "split; the other half is reported) or a split such as train (whole split reported)")
    add("--tune-max-queries", type=int, help="cap on the tuning split's queries (default 5000, seeded)")


def _similarity(add) -> None:
    from harness.similarity import SIMILARITIES

    names = SIMILARITIES.names()
    add("--similarity", nargs="+", metavar="METHOD",
        help="also compare the composed query with the gallery by other methods than cosine, each tuned on "
             "a seeded half of the split and reported on the other, paired with cosine "
             f"(harness/similarity): all (every method but the transductive ones), or any of {', '.join(names)}")
    add("--similarity-bank", metavar="SPLIT",
        help="the query bank of the hubness corrections (inverted-softmax, csls, dual-softmax ...): a split of "
             "the suite other than the evaluated one, auto (default: train, else another split) or none")
    add("--similarity-bank-max-queries", type=int, metavar="N",
        help="cap on the bank's queries (default 2000, a seeded subsample)")


def _reranking(add) -> None:
    from harness.rerank import RERANKERS

    add("--rerank", metavar="NAME",
        help="two-stage retrieval: re-score each query's first-stage top K with a cross-encoder that reads the "
             f"caption with the reference and the candidate together (harness/rerank): {', '.join(RERANKERS.names())}; "
             "both stages are reported, paired on the same queries")
    add("--rerank-k", type=int, metavar="K", help="candidates per query from the first stage (default 50)")
    add("--rerank-checkpoint", metavar="DIR",
        help="a directory a re-ranker saved (default: start from the backbone's own weights, ITM head included)")
    add("--rerank-fusion", metavar="none|tuned|ALPHA",
        help="order the top K by the re-ranker alone (none, the default), by alpha * stage-1 score + "
             "(1 - alpha) * sigmoid(stage-2 score) with a fixed ALPHA, or with alpha tuned on a seeded half")
    add("--rerank-train", action=argparse.BooleanOptionalAction,
        help="fine-tune the re-ranker on the training split's hard negatives (default: when the run fine-tunes "
             "and no --rerank-checkpoint is given)")
    add("--rerank-negatives", type=int, help="hard negatives per training query, drawn from its top K (default 7)")
    add("--rerank-epochs", type=int, help="re-ranker training epochs (default 2)")
    add("--rerank-batch-size", type=int, help="re-ranker training queries per step (default 32)")
    add("--rerank-lr", type=float,
        help="re-ranker learning rate (default: the recipe's, 1e-3 for tiny, 1e-5 for covr as BLIP's COCO "
             "retrieval fine-tuning)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from harness.core import distributed
    from harness.pipeline import run

    succeeded = False
    try:
        config = RunConfig.from_cli(args)
        if args.seeds:
            from harness.over_seeds import run_seeds

            run_seeds(config, args.seeds, argv)
        else:
            run(config, argv)
        succeeded = True
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.finish(wait_for_all=succeeded)
    return 0


if __name__ == "__main__":
    from harness.core import distributed

    distributed.exit_process(main())
