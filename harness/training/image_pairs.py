"""Training on images alone, as Pic2Word trains its mapping network.

Pic2Word needs no triplets: each image's pseudo word, read in the training text
"a photo of *", must find the image itself among the batch's images (its
src/trainer.py:102-156, on Conceptual Captions images, captions unused). Here a
split's images become (image, "", image) queries: the empty caption makes a
`trains_on == "images"` composer read its training text, and the target is the
image. `fine_tune` then trains the composer with its contrastive loss between
those queries and the images' features, every image once per epoch.

    data = image_pairs(suite.load("train"))
    fine_tune(backbone, data, settings, device, precision)
"""

from __future__ import annotations

from harness.core.errors import HarnessError
from harness.suites.base import Query, SplitData


def split_images(data: SplitData) -> list[str]:
    """Every distinct image of the split once, in order of first appearance: the
    queries' references and targets, then the gallery's items (a video's frames)."""
    items = []
    for query in data.queries:
        items.append(query.reference)
        if query.target is not None:
            items += data.images_of(query.target)
    items += [image for item in data.gallery for image in data.images_of(item)]
    images = list(dict.fromkeys(items))
    missing = [image for image in images if image not in data.image_paths]
    if missing:
        raise HarnessError(f"{data.suite}/{data.split}: {len(missing)} images have no file "
                           f"(first {missing[:3]}); {data.layout_help}")
    return images


def image_pairs(data: SplitData) -> SplitData:
    """The split's images as (image, "", image) queries, pair ids counting from 0,
    image ids kept; the gallery is the same images."""
    images = split_images(data)
    if len(images) < 2:
        raise HarnessError(f"{data.suite}/{data.split} has {len(images)} images; contrastive training needs 2")
    return SplitData(
        suite=data.suite, split=data.split,
        queries=[Query(pair_id=i, reference=image, caption="", target=image) for i, image in enumerate(images)],
        gallery=images, image_paths={image: data.image_paths[image] for image in images}, has_targets=True,
        layout_help=data.layout_help,
        provenance={**data.provenance, "training_pairs": "images: (image, '', image), every image once (Pic2Word)"},
    )
