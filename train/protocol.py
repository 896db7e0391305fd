"""OVSeg's evaluation protocol: how each image enters the model, its prediction's size, each benchmark's weight.

OVSeg evaluates the whole image with its shorter side at MIN_SIZE_TEST (640 for Swin-B, 512 for R101c) and
the longer at most MAX_SIZE_TEST (2560 / 2048), and resizes the prediction to the label's size
(detectron2's ``sem_seg_postprocess``); ``"long_side"`` is this project's fast protocol instead (the longer
side at the model's ``image_size``), which the demo uses. OVSeg's GETTING_STARTED evaluates each benchmark
with its own ensemble weight (CLIP's exponent, ``MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE_WEIGHT``) and warns that
results are sensitive to it; the paper reports one, 0.65.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from train.augment import nearest_indices

# protocol -> pmp.images.model_input_size's resize; "fcclip": detectron2's default test size, which FC-CLIP keeps
PROTOCOLS = {"ovseg": "short", "fcclip": "detectron2", "long_side": "long"}
# OVSeg GETTING_STARTED.md, "Evaluation with pre-trained weights": the configs' CLIP_ENSEMBLE_WEIGHT 0.7 for
# ADE20K-150 and -847, `MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE_WEIGHT 0.6` for Pascal Context-59 and -459, 0.45 for VOC-20.
OVSEG_CLIP_WEIGHTS = {"ade150": 0.7, "ade847": 0.7, "pc59": 0.6, "pc459": 0.6, "voc20": 0.45}


def ovseg_clip_weight(benchmark: str) -> float:
    """OVSeg's published ensemble weight of ``benchmark``; ValueError for one it publishes none for."""
    if benchmark not in OVSEG_CLIP_WEIGHTS:
        raise ValueError(
            f"OVSeg publishes no ensemble weight for {benchmark!r}; it does for {', '.join(OVSEG_CLIP_WEIGHTS)}"
        )
    return OVSEG_CLIP_WEIGHTS[benchmark]


def to_label_size(
    semantic: np.ndarray, proposals: np.ndarray | None, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """A prediction made at another size (an image the loader downscaled) at the label's size: the label map
    by nearest neighbour, the proposals (N, h, w) bilinearly."""
    if semantic.shape == tuple(shape):
        return semantic, proposals
    rows, cols = nearest_indices(semantic.shape[0], shape[0]), nearest_indices(semantic.shape[1], shape[1])
    resized = semantic[rows[:, None], cols[None, :]]
    if proposals is not None and len(proposals):
        proposals = F.interpolate(
            torch.from_numpy(np.asarray(proposals, np.float32))[None], size=shape, mode="bilinear"
        )[0]
        proposals = proposals.numpy()
    return resized, proposals
