"""OVSeg's region-noun pairs: ``python -m train.ovseg_pairs --segmenter SEG --data-root DATASETS --out PAIRS``.

OVSeg adapts CLIP to masked crops on 442k pairs it mines from COCO (its paper, Sec. 3.2; the pairs are its
``open_clip_training`` data ``coco_proposal_1cap``): a trained MaskFormer proposes class-agnostic masks for
each COCO training image, the nouns come from one of the image's captions, and CLIP gives each noun the
proposal whose masked crop it matches best. Each pair is the crop as OVSeg stores it (the proposal's tight
box, every pixel outside the mask set to the mean colour (124, 116, 103), which is how the mask is read
back: ``open_clip/transform.py`` ``Maskget``) and the noun, listed in a tab-separated file with OVSeg's
columns ``filepath`` and ``title``. :mod:`train.ovseg_adapt` trains on them.

Nouns are the caption's noun phrases as the demo reads captions (:func:`pmp.prompts.noun_phrases`, spaCy);
the caption is the image's first in ``captions_train2017.json`` ("1cap"). The proposals are the segmenter's
stage 1 (prompted with the nouns, which only a PMP segmenter reads), binarised at its ``crop_mask_threshold``;
the match is the cosine between each proposal's masked crop (:func:`pmp.stage2.masked_crops`) and each noun's
text embedding, under the segmenter's own CLIP.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pmp.postprocess import upsample
from pmp.prompts import load_spacy, noun_phrases
from pmp.segmenter import Segmenter
from pmp.stage2 import masked_crops

MEAN_FILL = (124, 116, 103)  # OVSeg open_clip/transform.py Maskget: the stored crops' background colour
PAIRS_FILE = "pairs.tsv"
COLUMNS = ("filepath", "title")  # OVSeg's --csv-img-key / --csv-caption-key, tab-separated


def first_captions(captions_json: Path) -> Iterator[tuple[str, str]]:
    """(image file name, its first caption) of a COCO captions file, in the file's image order."""
    data = json.loads(captions_json.read_text())
    first: dict[int, str] = {}
    for annotation in data["annotations"]:
        first.setdefault(annotation["image_id"], annotation["caption"].strip())
    for image in data["images"]:
        if image["id"] in first:
            yield image["file_name"], first[image["id"]]


def masked_region(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """OVSeg's stored crop: the mask's tight box of (H, W, 3) ``image``, the pixels outside the (H, W) bool
    ``mask`` set to :data:`MEAN_FILL`."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    crop = image[box].copy()
    crop[~mask[box]] = MEAN_FILL
    return crop


@torch.inference_mode()
def best_proposals(segmenter: Segmenter, image: np.ndarray, nouns: list[str]) -> list[tuple[str, np.ndarray]]:
    """For each noun, the (H, W) bool mask of the proposal whose masked crop CLIP matches best."""
    stages = segmenter.run_stages(image, nouns, stage2_mode="pool")  # its stage 1; the one dense pass is cheap
    threshold = segmenter.config.crop_mask_threshold
    masks = upsample(stages.mask_logits[None], image.shape[:2])[0].sigmoid()  # (N, H, W)
    clip = segmenter.clip
    geometry = (segmenter.config.crop_box, threshold)
    crops, kept = masked_crops(clip, image, masks, geometry=geometry)  # (K, 3, S, S), (K,)
    if not len(kept):
        return []
    crops = crops.to(device=clip.device, dtype=clip.open_clip.logit_scale.dtype)
    image_embeds = F.normalize(clip.encode_crops(crops), dim=-1)  # (K, C)
    text = clip.encode_text(nouns).to(image_embeds)  # (M, C), normalised
    best = (image_embeds @ text.T).argmax(dim=0)  # (M,) index into the K kept proposals
    return [(noun, (masks[kept[index]] > threshold).cpu().numpy()) for noun, index in zip(nouns, best.tolist())]


def mine(segmenter: Segmenter, data_root: Path, out: Path, limit: int | None = None) -> int:
    """Write the pairs of the first ``limit`` captioned COCO training images (all: None); returns their number."""
    coco = data_root / "coco"
    captions = coco / "annotations" / "captions_train2017.json"
    if not captions.is_file():
        raise FileNotFoundError(f"{captions} is missing: OVSeg's pairs come from COCO's training captions")
    regions = out / "regions"
    regions.mkdir(parents=True, exist_ok=True)
    nlp = load_spacy()
    count = 0
    with open(out / PAIRS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(COLUMNS)
        for index, (file_name, caption) in enumerate(first_captions(captions)):
            if limit is not None and index >= limit:
                break
            nouns = list(dict.fromkeys(noun_phrases(caption, nlp)))
            path = coco / "train2017" / file_name
            if not nouns or not path.is_file():
                continue
            image = np.array(Image.open(path).convert("RGB"))  # writable: torch refuses read-only arrays
            for noun, mask in best_proposals(segmenter, image, nouns):
                target = regions / f"{Path(file_name).stem}_{count:07d}.png"  # lossless: the fill stays exact
                Image.fromarray(masked_region(image, mask)).save(target)
                writer.writerow((str(target.relative_to(out)), noun))
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.ovseg_pairs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--segmenter", required=True, help="a trained segmenter folder (its stage 1 proposes)")
    parser.add_argument("--data-root", type=Path, required=True, help="holds coco/train2017 and coco/annotations")
    parser.add_argument("--out", type=Path, required=True, help="the pairs folder: pairs.tsv and regions/")
    parser.add_argument("--limit", type=int, default=None, help="only the first N captioned images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    segmenter = Segmenter.from_pretrained(args.segmenter, device=args.device)
    segmenter.config.crop_top_k = segmenter.config.decoder.num_queries  # every proposal may be a noun's
    try:
        count = mine(segmenter, args.data_root, args.out, args.limit)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{count} region-noun pairs in {args.out / PAIRS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
