"""coir-bench's harness, in rooms that follow the data:

    suites (annotations, images) --> evaluation (embed, cache, score) --> reports
         `--> training (fine-tune) --^        `--> mixing (m = w0 q + w1 t + w2 f)
                                              `--> similarity (other ways than cosine)
                                              `--> rerank (a cross-encoder over the top K)

- core/        errors, atomic writes, paths, progress, registry, precision, processes,
               provenance: imports no other harness package;
- suites/      datasets (CIRR, shapes, FashionIQ, CIRCO, WebVid-CoVR, Dense-WebVid-CoVR,
               EgoCVR, GeneCIS), their generators and scenes, image files: core only;
- evaluation/  embedding and its cache, validation, scoring protocols, per-query
               candidate galleries, metrics, server files, the papers' numbers: core,
               suites, coir_kernels, backbones;
- training/    the fine-tuning loop, settings, engines, gathered negatives, gradient
               caching, losses, recipes, resumable state: core, suites, backbones;
- mixing/      the mixed-embedding extension: core, suites, evaluation, coir_kernels,
               training.losses;
- similarity/  other ways to compare vectors than cosine (hubness corrections, dual
               softmax, expansion, k-reciprocal, a learned map) and their study: core,
               suites, evaluation, mixing, coir_kernels, training.losses;
- rerank/      two-stage retrieval: re-rankers (blip-itm, blip2-itm), the first stage's
               top K, the final ranking as the protocol scores it, hard-negative
               training through the fine-tuning loop: core, suites, evaluation, mixing,
               similarity, training, coir_kernels, backbones;
- reports/     tables from result files only: core, evaluation, config.
Beside them: run.py (the CLI), config.py (RunConfig and the settings each stage gets),
pipeline.py (one run, stage by stage), report.py, throughput.py, mix_timing.py and
similarity_timing.py (entry points). `coir_kernels` imports nothing of the harness, `backbones` only harness.core;
tests/test_structure.py checks all of it.
"""
