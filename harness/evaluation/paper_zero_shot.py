"""Published zero-shot CLIP composed-retrieval numbers (Pic2Word, SEARLE, SEARLE-XL),
kept as data like harness/evaluation/paper.py's rows (which appends them to
PAPER_CIRR, PAPER_FASHIONIQ and PAPER_CIRCO), and the protocols that LinCIR's and
CLIP4Cir's code runs, for rows still to be traced.

Every number was read from a file in a public repository: the one table that could be
opened is the Results table of SEARLE's ICCV 2023 poster (miccunifi/SEARLE
assets/Poster.pdf, added at 958cd9d, read at a9c314b; the table is drawn, so it was
read from a rendering of the page). It gives CIRR R@1/5/10, FashionIQ R@10/R@50 (the
mean over the three categories: SEARLE's validate.py lines 507-508 print that mean)
and CIRCO mAP@10. The papers' own tables (Pic2Word, SEARLE, LinCIR, CLIP4Cir) could
not be read from this machine; no number here comes from them or from memory.

Protocol fields as in harness/evaluation/fingerprint.py FIELDS, plus "composer" and
"prompt" (the text the method's evaluation code builds from the caption) and
"image_transform" (what happens to an image before the encoder). The backbone is the
row's "weights", not a protocol field. Every row here is zero-shot ("zero_shot": True).
"""

from __future__ import annotations

_SEARLE_POSTER = "miccunifi/SEARLE assets/Poster.pdf (958cd9d; read at a9c314b), Results table"
_PIC2WORD_SOURCE = _SEARLE_POSTER + ", row 'Pic2Word [2]' (as SEARLE's authors table it)"
_COSINE = "cosine (one vector each)"

# SEARLE's protocol (miccunifi/SEARLE at a9c314b, src/): one pseudo-word token from
# phi (torch.hub 'searle', ViT-B/32 for SEARLE, ViT-L/14 for SEARLE-XL:
# generate_test_submission.py lines 300-306) spliced into the caption's template,
# CLIP's tokenizer with 77 tokens (lines 136, 201; validate.py line 55), the model in
# fp32 (generate_test_submission.py line 327), TargetPad(1.25) then a bicubic resize of
# the shorter side and a centre crop to the model's 224 px (the default --preprocess-type
# targetpad, line 251 and validate.py line 401; src/data_utils.py lines 53-67).
# The poster does not name the splits; these are the ones SEARLE's README evaluates:
# CIRR and CIRCO test through their servers (generate_test_submission.py), FashionIQ val.
# - CIRR test1: "a photo of $ that {caption}" (line 133); the gallery is
#   image_splits/split.rc2.test1.json (src/datasets.py lines 190-191); the reference is
#   removed before the top 50 are written (lines 87-92, 99).
# - FashionIQ val: each caption stripped of ".?, " at both ends, joined "c1 and c2" and
#   "c2 and c1", each as "a photo of $ that {...}", the mean of the two normalised
#   embeddings (validate.py lines 45-64: the harness's fashioniq-both-orders suite); the
#   gallery is each category's image_splits file (src/datasets.py lines 73-74); nothing
#   is removed (validate.py lines 93-100).
# - CIRCO test: "a photo of $ that {caption}" (generate_test_submission.py line 199) over
#   the COCO 2017 unlabeled image-info file (src/datasets.py lines 291-294); the top 50 of
#   every image, the reference not removed (generate_test_submission.py lines 228-234).
_SEARLE = {"reference_removed": True, "convention": "official server", "caption_cleaning": "none",
           "text_length": 77, "image_size": 224, "interpolation": "bicubic",
           "image_transform": "TargetPad 1.25, shorter side to 224 (bicubic), centre crop",
           "precision": "fp32", "similarity": _COSINE, "composer": "searle"}
_SEARLE_CIRR = {"suite": "cirr", "split": "test1", "gallery": "split file", **_SEARLE,
                "prompt": "a photo of $ that {caption}"}
_SEARLE_FASHIONIQ = {"suite": "fashioniq-both-orders", "split": "val", "gallery": "split file of each category",
                     **_SEARLE, "reference_removed": False, "convention": None,
                     "caption_cleaning": "strip('.?, ') of each caption",
                     "prompt": "a photo of $ that {c1} and {c2} | a photo of $ that {c2} and {c1} "
                               "(mean of the two normalised embeddings)"}
_SEARLE_CIRCO = {"suite": "circo", "split": "test", "gallery": "image-info file (COCO 2017 unlabeled)",
                 **_SEARLE, "reference_removed": False, "query_template": "caption",
                 "prompt": "a photo of $ that {caption}"}

# Pic2Word's protocol (google-research/composed_image_retrieval at 8c05329): OpenAI
# CLIP ViT-L/14 (README's --model ViT-L/14), CLIP's tokenizer with 77 tokens
# (src/data.py line 41; third_party/open_clip/clip.py line 191), a bicubic resize of the
# shorter side and a centre crop to 224 px (model/clip.py lines 117-120; TargetPad only
# with --target-pad, src/eval_retrieval.py lines 151-155, which the README's commands
# do not pass). The poster cites these CIRR and FashionIQ numbers from Pic2Word [2].
# - CIRR test1: "a photo of * , {caption}" (src/data.py line 111); the gallery is
#   image_splits/split.rc2.test1.json (line 64); the reference is removed before the top
#   50 are written (src/eval_utils.py lines 589-599).
# - FashionIQ val: "a photo of * , {c2} and {c1}", the second caption first (src/data.py
#   line 228), captions as written; each category's image_splits file (lines 164-165);
#   nothing removed (src/eval_utils.py lines 544-555).
# - CIRCO test: Pic2Word's code has no CIRCO evaluation; SEARLE's authors ran it with code
#   in neither repository, so only suite and split are known.
_PIC2WORD = {"reference_removed": True, "convention": "official server", "caption_cleaning": "none",
             "text_length": 77, "image_size": 224, "interpolation": "bicubic",
             "image_transform": "shorter side to 224 (bicubic), centre crop", "similarity": _COSINE,
             "composer": "pic2word"}
_PIC2WORD_CIRR = {"suite": "cirr", "split": "test1", "gallery": "split file", **_PIC2WORD,
                  "prompt": "a photo of * , {caption}"}
_PIC2WORD_FASHIONIQ = {"suite": "fashioniq", "split": "val", "gallery": "split file of each category", **_PIC2WORD,
                       "reference_removed": False, "convention": None, "prompt": "a photo of * , {c2} and {c1}"}
_PIC2WORD_CIRCO = {"suite": "circo", "split": "test", "composer": "pic2word",
                   "prompt": "not published (SEARLE's authors' run; code in neither repository)"}

_B32, _L14 = "OpenAI CLIP ViT-B/32", "OpenAI CLIP ViT-L/14"


def _row(name: str, weights: str, source: str, protocol: dict, metrics: dict) -> dict:
    return {"row": name, "source": source, "weights": weights, "zero_shot": True, "protocol": protocol,
            "metrics": metrics}


ZERO_SHOT_CIRR = [
    _row("SEARLE, CLIP ViT-B/32, zero-shot", _B32, _SEARLE_POSTER, _SEARLE_CIRR,
         {"R@1": 24.00, "R@5": 53.42, "R@10": 66.82}),
    _row("SEARLE-XL, CLIP ViT-L/14, zero-shot", _L14, _SEARLE_POSTER, _SEARLE_CIRR,
         {"R@1": 24.24, "R@5": 52.48, "R@10": 66.29}),
    _row("Pic2Word, CLIP ViT-L/14, zero-shot", _L14, _PIC2WORD_SOURCE, _PIC2WORD_CIRR,
         {"R@1": 23.90, "R@5": 51.70, "R@10": 65.30}),
]
ZERO_SHOT_FASHIONIQ = [
    _row("SEARLE, CLIP ViT-B/32, zero-shot", _B32, _SEARLE_POSTER, _SEARLE_FASHIONIQ,
         {"avg R@10": 22.89, "avg R@50": 42.53}),
    _row("SEARLE-XL, CLIP ViT-L/14, zero-shot", _L14, _SEARLE_POSTER, _SEARLE_FASHIONIQ,
         {"avg R@10": 25.56, "avg R@50": 46.23}),
    _row("Pic2Word, CLIP ViT-L/14, zero-shot", _L14, _PIC2WORD_SOURCE, _PIC2WORD_FASHIONIQ,
         {"avg R@10": 24.70, "avg R@50": 43.70}),
]
ZERO_SHOT_CIRCO = [
    _row("SEARLE, CLIP ViT-B/32, zero-shot", _B32, _SEARLE_POSTER, _SEARLE_CIRCO, {"mAP@10": 9.94}),
    _row("SEARLE-XL, CLIP ViT-L/14, zero-shot", _L14, _SEARLE_POSTER, _SEARLE_CIRCO, {"mAP@10": 12.73}),
    _row("Pic2Word, CLIP ViT-L/14, zero-shot", _L14, _PIC2WORD_SOURCE, _PIC2WORD_CIRCO, {"mAP@10": 9.51}),
]
# Every row above, each with its suite in its protocol (BENCHMARKS.md's zero-shot section).
PAPER_ZERO_SHOT = ZERO_SHOT_CIRR + ZERO_SHOT_FASHIONIQ + ZERO_SHOT_CIRCO

# LinCIR (navervision/lincir at 1dec42d): no row yet, its README has no results table and
# the paper's could not be read. Its code runs SEARLE's protocol with its own phi:
# Hugging Face CLIP (large: openai/clip-vit-large-patch14, huge: laion ViT-H/14, giga:
# ViT-bigG; models.py lines 13-16), weights loaded in fp16 then cast to fp32
# (generate_test_submission.py lines 289, 342-343), CLIPImageProcessor: shorter side to
# 224, bicubic, centre crop (models.py lines 18-28; --preprocess-type clip by default,
# line 252); CIRR test "a photo of $ that {caption}" with the reference removed (lines
# 88-93, 134); CIRCO test the same prompt, nothing removed (lines 200, 229-235); FashionIQ
# val SEARLE's both orders and stripping (validate.py lines 47-65); 77 tokens (line 137).
_LINCIR = {"caption_cleaning": "none", "text_length": 77, "image_size": 224, "interpolation": "bicubic",
           "image_transform": "shorter side to 224 (bicubic), centre crop", "similarity": _COSINE,
           "composer": "lincir"}
LINCIR_CODE_PROTOCOLS = {
    "cirr": {"suite": "cirr", "split": "test1", "gallery": "split file", "reference_removed": True,
             "convention": "official server", **_LINCIR, "prompt": "a photo of $ that {caption}"},
    "fashioniq": {**_SEARLE_FASHIONIQ, **_LINCIR, "caption_cleaning": "strip('.?, ') of each caption",
                  "precision": None},
    "circo": {**_SEARLE_CIRCO, **_LINCIR, "precision": None},
}

# CLIP4Cir (ABaldrati/CLIP4Cir at dfed9f7): fine-tuned on each suite's train split, not
# zero-shot; no row yet (the README has no results table, the paper's could not be read).
# Its code: CLIP RN50x4 by default (src/validate.py line 271, 288 px), the model in fp32
# (lines 124, 252), TargetPad(1.25) then a bicubic resize and centre crop (lines 273-291;
# src/data_utils.py lines 82-96); the query is the CLIP text of the caption itself
# combined with the reference image's feature by "sum" (the normalised sum, src/utils.py
# lines 47-54) or the trained "combiner" (src/validate.py lines 299-311). CIRR: the
# caption as written, 77 tokens (line 219; src/cirr_test_submission.py line 148), the
# reference removed (src/validate.py lines 162-166; src/cirr_test_submission.py lines
# 98-103). FashionIQ val: "{c1.capitalize()} and {c2}", each stripped of ".?, ", one
# order (src/validate.py lines 89-93), nothing removed (lines 43-50).
_CLIP4CIR = {"caption_cleaning": "none", "text_length": 77, "image_size": 288, "interpolation": "bicubic",
             "image_transform": "TargetPad 1.25, shorter side (bicubic), centre crop", "precision": "fp32",
             "similarity": _COSINE, "composer": "combiner", "prompt": None}
CLIP4CIR_CODE_PROTOCOLS = {
    "cirr": {"suite": "cirr", "split": "test1", "gallery": "split file", "reference_removed": True,
             "convention": "official server", **_CLIP4CIR},
    "fashioniq": {"suite": "fashioniq", "split": "val", "gallery": "split file of each category",
                  "reference_removed": False, **_CLIP4CIR, "caption_cleaning": "strip('.?, '), first capitalised",
                  "prompt": "{c1} and {c2}"},
}
