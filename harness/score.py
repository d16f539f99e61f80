"""python -m harness.score: score embeddings computed elsewhere (CLIP4Cir, SPRC, a
zero-shot method) with a suite's protocol, without a backbone adapter.

    python -m harness.score --suite cirr --data-root /data/CIRR --split val --embeddings mine.npz
    python -m harness.score --suite cirr --data-root /data/CIRR --split test1 --embeddings mine.safetensors

The embeddings file holds (names are fixed):

    gallery      (G, D) float, one row per gallery image (or (G, T, D) multi-vector)
    composed     (Q, D) float, one row per query: the composed query f(q, t)
    image, text  (Q, D) float, optional: the image-only and text-only baselines
    gallery_ids  the G image ids (e.g. "dev-190-0-img0"), any order
    pair_ids     the Q pair ids of the split's captions file, any order

In a .npz, the ids are arrays (numpy strings or integers); a .safetensors file
holds only tensors, so the ids go in its metadata as JSON lists under the same
names (`safetensors.torch.save_file(tensors, path, metadata={"gallery_ids":
json.dumps(ids), "pair_ids": json.dumps(pair_ids)})`). Rows are matched to the
split by id: every id of the split must be there, once, and no other.

Scoring is the harness's own: metrics with bootstrap intervals, the per-query
file, the HTML page, and for a split without targets the server files, all under
--out. Vectors are scored by their inner product as given: the results call it
cosine only where every vector is unit length (`--normalize` makes them so, and
says it did), "dot product" otherwise. (N, T, D) features are pooled by the suite's
token rule (`--token-pooling`: max over token pairs on CIRR, the token mean on
FashionIQ, CIRCO and WebVid-CoVR, as CoVR-2 scores them). The images are not
needed: the HTML page shows an image's id where it cannot read the image. Every
input is checked before anything is written, and a failed command leaves --out as
it was. In Python, `score_embeddings(suite, split, gallery_ids, gallery, pair_ids,
composed)` does the same for arrays in memory.

Under torchrun (`torchrun --nproc_per_node=N -m harness.score ...`, gloo) rank 0 reads
the file and writes everything, and every rank scores a contiguous shard of the
gallery (harness/evaluation/shard_scoring.py): the same files as one process, and
the results' "gallery_shards" block says the gallery was sharded over N ranks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from harness.core import distributed, provenance
from harness.core.atomic import all_or_nothing, replace_atomically
from harness.core.errors import HarnessError
from harness.evaluation import reference_rule, shard_scoring, token_pooling
from harness.evaluation.embed import SplitEmbeddings, methods_of
from harness.evaluation.fingerprint import fingerprint
from harness.evaluation.metrics import CONVENTIONS, TIE_RULES
from harness.evaluation.protocols import PROTOCOLS, ScoringRules, resolved
from harness.evaluation.validate import check_embeddings
from harness.outputs import protocol_fields, result_fields, score, write_outputs
from harness.similarity.external import ExternalStudy, add_study_arguments, study_from_arguments
from harness.suites import SUITES
from harness.suites.captions import CLEANINGS, cleaned
from harness.suites.circo import QUERY_TEMPLATES

TENSORS = ("gallery", "composed", "image", "text")
REQUIRED = ("gallery", "composed", "gallery_ids", "pair_ids")
NOT_RECORDED = "not recorded (embeddings made elsewhere)"


def read_embeddings(path: Path) -> dict:
    """{name: tensor or list of ids} from a .npz or .safetensors file."""
    if not path.is_file():
        raise HarnessError(f"--embeddings {path}: no such file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            found = {name: arrays[name] for name in arrays.files}
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in found.items() if k in TENSORS}
        out.update({k: found[k].tolist() for k in ("gallery_ids", "pair_ids") if k in found})
    elif path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            out = {k: f.get_tensor(k) for k in f.keys() if k in TENSORS}
            metadata = f.metadata() or {}
        for key in ("gallery_ids", "pair_ids"):
            if key in metadata:
                try:
                    out[key] = json.loads(metadata[key])
                except json.JSONDecodeError as err:
                    raise HarnessError(f"{path}: metadata {key} is not a JSON list ({err})") from err
    else:
        raise HarnessError(f"--embeddings {path}: expected a .npz or .safetensors file")
    missing = [k for k in REQUIRED if k not in out]
    if missing:
        raise HarnessError(f"{path}: missing {', '.join(missing)} (see python -m harness.score --help)")
    return out


def _order(given: list, wanted: list, what: str) -> torch.Tensor:
    """Row of each wanted id in `given`, or an error naming what differs."""
    given_keys = [str(g) for g in given]
    row = {g: i for i, g in enumerate(given_keys)}
    if len(row) != len(given_keys):
        repeated = sorted({g for g in given_keys if given_keys.count(g) > 1})[:5]
        raise HarnessError(f"{what}: ids appear more than once: {', '.join(repeated)}")
    wanted_keys = [str(w) for w in wanted]
    missing = [w for w in wanted_keys if w not in row]
    extra = sorted(set(given_keys) - set(wanted_keys))
    if missing or extra:
        raise HarnessError(f"{what}: {len(given_keys)} ids for the split's {len(wanted_keys)}; missing "
                           f"{missing[:5] or 'none'}, not in the split {extra[:5] or 'none'}")
    return torch.tensor([row[w] for w in wanted_keys], dtype=torch.long)


def split_embeddings(data, arrays: dict, normalize: bool = False) -> SplitEmbeddings:
    """The arrays in the split's order, checked as the harness's own embeddings are;
    `normalize`: every vector (every token of multi-vector rows) L2-normalised."""
    for name in TENSORS:
        if name in arrays and len(arrays[name]) != len(arrays["gallery_ids" if name == "gallery" else "pair_ids"]):
            ids = "gallery_ids" if name == "gallery" else "pair_ids"
            raise HarnessError(f"{name}: {len(arrays[name])} rows for {len(arrays[ids])} {ids}")
    gallery_rows = _order(arrays["gallery_ids"], list(data.gallery), "gallery_ids")
    query_rows = _order(arrays["pair_ids"], [q.pair_id for q in data.queries], "pair_ids")

    def rows(name: str, index: torch.Tensor):
        if name not in arrays:
            return None
        tensor = arrays[name].float()[index]
        return torch.nn.functional.normalize(tensor, dim=-1) if normalize else tensor

    emb = SplitEmbeddings(list(data.gallery), rows("gallery", gallery_rows), rows("composed", query_rows),
                          rows("image", query_rows), rows("text", query_rows))
    check_embeddings(data, emb, methods_of(emb))
    return emb


def save_embeddings(path: Path, emb: SplitEmbeddings, pair_ids: list) -> Path:
    """`emb` in the file format above (safetensors), as `--save-embeddings` writes it."""
    from safetensors.torch import save_file

    tensors = {name: getattr(emb, name).float().contiguous() for name in TENSORS if getattr(emb, name) is not None}
    metadata = {"gallery_ids": json.dumps(list(emb.gallery_ids)), "pair_ids": json.dumps(list(pair_ids))}
    return replace_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def score_embeddings(suite: str, split: str, gallery_ids: list, gallery, pair_ids: list, composed,
                     image=None, text=None, data_root: str | None = None, out: str = "results",
                     name: str = "external", rules: ScoringRules | None = None,
                     caption_cleaning: str = "covr", command: str | None = None, normalize: bool = False,
                     query_template: str = "caption", study: ExternalStudy | None = None) -> dict:
    """Score arrays in memory (numpy or torch) with the suite's protocol; the results
    dict (also written under `out`)."""
    arrays = {"gallery_ids": list(gallery_ids), "pair_ids": list(pair_ids)}
    for key, value in (("gallery", gallery), ("composed", composed), ("image", image), ("text", text)):
        if value is not None:
            arrays[key] = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
    return _score(suite, split, arrays, data_root, Path(out), name, rules or ScoringRules(), caption_cleaning, command,
                  source=None, normalize=normalize, query_template=query_template, study=study)


def _score(suite_name: str, split: str, arrays: dict, data_root, out_dir: Path, name: str, rules: ScoringRules,
           caption_cleaning: str, command: str | None, source: Path | None, normalize: bool = False,
           query_template: str = "caption", study: ExternalStudy | None = None) -> dict:
    started = time.perf_counter()
    if rules.convention not in CONVENTIONS or rules.tie_rule not in TIE_RULES:
        raise HarnessError(f"convention must be one of {CONVENTIONS}, tie rule one of {TIE_RULES}")
    suite_cls = SUITES.get(suite_name)
    takes_template = "query_template" in getattr(suite_cls, "options", ())
    if query_template != "caption" and not takes_template:
        raise HarnessError(f"--query-template applies to circo, not {suite_name}: leave it out")
    suite = suite_cls(Path(data_root) if data_root else None,
                      **({"query_template": query_template} if takes_template else {}))
    protocol = PROTOCOLS.get(suite.scoring)
    rules = resolved(rules, protocol)
    data = cleaned(suite.load(split), caption_cleaning)
    emb = split_embeddings(data, arrays, normalize)
    if study is not None:
        study.check()
    digest = hashlib.sha256(source.read_bytes()).hexdigest() if source else None
    stem = f"{suite_name}_{split}_{name}"
    # under torchrun the other ranks score their gallery shards (harness/evaluation/shard_scoring.py);
    # the similarity study scores the whole gallery here
    with all_or_nothing(), shard_scoring.session() as sharding:  # a failure past this point leaves --out as it was
        scored = score(protocol, data, emb, rules, out_dir, stem, "harness.score --normalize" if normalize else None)
        scored["gallery_shards"] = sharding.record()
        if study is not None:
            mark = sharding.mark()
            with shard_scoring.whole_gallery():
                scored["similarity_study"] = study.run(protocol, rules, data, emb, read_embeddings)
            scored["similarity_study"]["gallery_shards"] = sharding.record(mark)
        result = _result(data, protocol_fields(protocol, data, rules, scored), scored, emb, name, command, source,
                         digest, started)
        write_outputs(result, scored.get("records", []), data, out_dir, stem)
    return result


def _result(data, described: dict, scored: dict, emb: SplitEmbeddings, name: str, command: str | None,
            source: Path | None, digest: str | None, started: float) -> dict:
    """The results file of scored outside embeddings: what the harness can know of them."""
    model = {"text_length": NOT_RECORDED, "image_size": NOT_RECORDED, "interpolation": NOT_RECORDED,
             "similarity": scored["similarity"]}
    gallery_model = {"rule": "loaded", "checkpoint": str(source) if source else name, "checkpoint_sha256": digest}
    return {
        "schema": 1,
        "date": provenance.now(),
        "command": command,
        "config": None,
        "seed": None,
        "precision": NOT_RECORDED,
        "protocol": {"suite": data.suite, "split": data.split, "queries": len(data.queries),
                     "gallery_images": len(data.gallery), **described,
                     "caption_cleaning": data.provenance.get("caption_cleaning", "none"),
                     "gallery": data.provenance.get("gallery", "split file"), "gallery_model": gallery_model,
                     "fingerprint": fingerprint(data, described, model, NOT_RECORDED, gallery_model)},
        "backbone": {"name": name, "checkpoint": str(source) if source else "arrays in memory",
                     "checkpoint_sha256": digest, "embed_dim": emb.gallery.shape[-1], "image_size": None,
                     "parameters": None},
        **result_fields(scored),
        "training": None,
        "data": data.provenance,
        "timings": {"embedding": None, "total_seconds": time.perf_counter() - started},
        "git": provenance.git_state(),
        "packages": provenance.package_versions(),
        "hardware": provenance.hardware(torch.device("cpu")),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m harness.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, help=f"one of {', '.join(SUITES.names())}")
    parser.add_argument("--split", default="val")
    parser.add_argument("--data-root", help="the suite's folder (generated suites: optional)")
    parser.add_argument("--embeddings", type=Path, required=True, help=".npz or .safetensors (see above)")
    parser.add_argument("--name", help="the model's name in the results (default: the file's stem)")
    parser.add_argument("--out", default="results")
    parser.add_argument("--convention", choices=CONVENTIONS, default="covr")
    parser.add_argument("--tie-rule", choices=TIE_RULES, default="pessimistic")
    parser.add_argument("--caption-cleaning", choices=CLEANINGS, default="covr",
                        help="only recorded (captions were encoded elsewhere): say how yours were cleaned")
    parser.add_argument("--reference", choices=reference_rule.RULES, default="remove",
                        help="remove (default), keep, covr-order (webvid-covr): see python -m harness.run --help")
    parser.add_argument("--token-pooling", choices=token_pooling.CHOICES, default="auto",
                        help="(N, T, D) features: auto (the suite's CoVR-2 rule; default), max, mean")
    parser.add_argument("--query-template", choices=list(QUERY_TEMPLATES), default="caption",
                        help="circo, only recorded (queries were encoded elsewhere): caption or shared-concept")
    parser.add_argument("--normalize", action="store_true",
                        help="L2-normalise every vector (every token) before scoring, and say so in the results")
    add_study_arguments(parser)
    args = parser.parse_args(argv)
    succeeded = False
    try:
        if distributed.launched_by_torchrun():  # every rank scores a shard of the gallery; rank 0 reads and writes
            distributed.init(torch.device("cpu"))
            if not distributed.is_main():
                shard_scoring.serve()
                succeeded = True
                return 0
        with shard_scoring.session():  # from the start: any error of rank 0 lets the other ranks go
            arrays = read_embeddings(args.embeddings)
            _score(args.suite, args.split, arrays, args.data_root, Path(args.out),
                   args.name or args.embeddings.stem.removesuffix(".embeddings"),
                   ScoringRules(args.convention, args.tie_rule, args.reference, args.token_pooling),
                   args.caption_cleaning, "python -m harness.score " + shlex.join(argv), args.embeddings,
                   args.normalize, args.query_template, study_from_arguments(args))
        succeeded = True
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.finish(wait_for_all=succeeded)
    return 0


if __name__ == "__main__":
    distributed.exit_process(main())
