"""What :class:`pmp.segmenter.Segmenter` returns: both stages' outputs for one image, before and after Eq. 3."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pmp.postprocess import upsample


@dataclass
class SegmentationResult:
    """Everything both stages computed for one image, at the image's own size.

    ``proposals`` are upsampled lazily from the mask-resolution logits: most callers only need the
    semantic map and the picked masks, and N full-size float masks are large (100 x 512 x 512 x 4 B).
    """

    labels: list[str]
    semantic: np.ndarray  # (H, W) int64 index into labels (-1 only for unclaimed pixels, when asked for)
    p: np.ndarray  # (N, K) stage-1 probabilities, Eq. 1 (no-object column dropped)
    p_hat: np.ndarray  # (N, K) CLIP probabilities, Eq. 2
    p_out: np.ndarray  # (N, K) Eq. 3: p^(1 - w) * p_hat^w, w = clip_weight (or clip_weight_unseen per prompt)
    selected: list[tuple[int, float]]  # per label: (proposal index with the highest p_out, that p_out)
    timings: dict[str, float]
    clip_weight: float
    stage2_mode: str
    mask_threshold: float
    no_object: np.ndarray  # (N,) stage-1 probability of "no object" per proposal
    mask_logits: torch.Tensor = field(repr=False)  # (N, h, w) at mask resolution, padding removed
    image_size: tuple[int, int] = (0, 0)  # (H, W)
    clip_weight_unseen: float | None = None  # Eq. 3's weight for prompts outside stage 1's training names
    _proposals: np.ndarray | None = field(default=None, repr=False)

    @property
    def proposals(self) -> np.ndarray:
        """(N, H, W) float32 first-stage masks in [0, 1] at image size."""
        if self._proposals is None:
            self._proposals = upsample(self.mask_logits[None], self.image_size)[0].sigmoid().numpy()
        return self._proposals

    def picked_mask(self, label_index: int) -> np.ndarray:
        """(H, W) bool: the proposal picked for one label, binarised at ``mask_threshold``."""
        index = self.selected[label_index][0]
        return (
            upsample(self.mask_logits[index][None, None], self.image_size)[0, 0].sigmoid().numpy()
            >= self.mask_threshold
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary: labels, the picked proposal per label with p, p_hat, p_out, and timings."""
        return {
            "labels": self.labels,
            "clip_weight": self.clip_weight,
            "clip_weight_unseen": self.clip_weight_unseen,
            "stage2_mode": self.stage2_mode,
            "selected": [
                {
                    "label": label,
                    "proposal": index,
                    "p": float(self.p[index, k]),
                    "p_hat": float(self.p_hat[index, k]),
                    "p_out": float(score),
                    "pixels": int((self.semantic == k).sum()),
                }
                for k, (label, (index, score)) in enumerate(zip(self.labels, self.selected))
            ],
            "timings": self.timings,
        }


@dataclass
class StageOutputs:
    """What both stages computed for one image, before Eq. 3: the input of :meth:`Segmenter.combine`."""

    labels: list[str]
    p: torch.Tensor  # (N, K) stage-1 probabilities (Eq. 1), no-object column dropped
    p_hat: torch.Tensor  # (N, K) CLIP probabilities (Eq. 2)
    no_object: torch.Tensor  # (N,)
    mask_logits: torch.Tensor  # (N, h, w) at mask resolution, padding removed
    image_size: tuple[int, int]  # (H, W) of the input image
    stage2_mode: str
    timings: dict[str, float]
    # The flip test (run_stages(flip_test=True)): both stages on the image mirrored left to right, whose
    # class maps combine mirrors back and adds to these. None: one view, as every reported number.
    mirrored: "StageOutputs | None" = None
