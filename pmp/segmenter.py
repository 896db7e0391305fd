"""The one inference API: ``Segmenter`` runs both stages of the paper and keeps everything for inspection.

Eq. 1 (stage 1): every query q gives a mask M_q and a class embedding e_q; p[q, k] = softmax over the
prompts and the no-object embedding of cos(e_q, t_k) / tau.
Eq. 2 (stage 2): CLIP classifies each proposal, p_hat[q, k] = softmax_k(cos(f_q, t_k) * s) where f_q is
the mask-pooled dense CLIP feature (``pool``) or the CLIP embedding of the masked crop (``crop``, OVSeg).
Eq. 3 (ensemble): p_out = p^(1 - w) * p_hat^w with w = ``clip_weight`` = 0.65. The paper writes
p^lambda * p_hat^(1 - lambda) with lambda = 0.65 "following ODISE", but in the codebases whose values it
takes (OVSeg's ``CLIP_ENSEMBLE_WEIGHT``: ``pow(mask_cls, 1 - w) * pow(clip_cls, w)``; ODISE's beta) that
number is the exponent of the CLIP term, so we apply it there: Eq. 3's lambda is 1 - clip_weight.
w = 0 is stage 1 alone, w = 1 is CLIP alone.
The semantic map is Mask2Former's semantic inference, sum_q p_out[q, k] * sigmoid(M_q)(x, y), argmax
over k at every pixel (as Mask2Former and OVSeg do: no pixel is left unlabelled); the K class maps are
computed at mask resolution and their bilinear upsampling to the image is argmax-ed without
materialising K full-size maps (:func:`upsampled_argmax`). ``unclaimed_threshold`` optionally marks
pixels no proposal covers (a display option, off for every reported number).

:meth:`Segmenter.segment` is :meth:`Segmenter.run_stages` (both stages: p, p_hat, mask logits) followed
by :meth:`Segmenter.combine` (Eq. 3 and post-processing), so a sweep over ``clip_weight`` reuses one
pass of both stages.

Speed (benchmarks/latency.py measures each stage; benchmarks/README.md has the figures): text
embeddings are cached by :class:`CLIPModel` (and cached prompts skip the token-limit check); stage 2
``pool`` runs one dense CLIP pass - none when stage 1's backbone is the same CLIP ResNet on the same
pixels (its trunk is reused) - and a ViT tower sees the image at ``vit_dense_scale``; ``crop`` upsamples
and crops only the ``crop_top_k`` proposals; ``autocast_dtype`` opts into bfloat16/float16 autocast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer

from pmp.checkpoint import MAX_SHARD_SIZE, load_config, load_weights, resolve_checkpoint, save_checkpoint
from pmp.clip import CLIPModel
from pmp.config import STAGE2_MODES, SegmenterConfig
from pmp.images import load_image
from pmp.modeling import build_mask_proposal_model
from pmp.prompts import PromptError, parse_prompts


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
    p_out: np.ndarray  # (N, K) Eq. 3: p^(1 - clip_weight) * p_hat^clip_weight
    selected: list[tuple[int, float]]  # per label: (proposal index with the highest p_out, that p_out)
    timings: dict[str, float]
    clip_weight: float
    stage2_mode: str
    mask_threshold: float
    no_object: np.ndarray  # (N,) stage-1 probability of "no object" per proposal
    mask_logits: torch.Tensor = field(repr=False)  # (N, h, w) at mask resolution, padding removed
    image_size: tuple[int, int] = (0, 0)  # (H, W)
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
        return upsample(self.mask_logits[index][None, None], self.image_size)[0, 0].sigmoid().numpy() >= self.mask_threshold

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary: labels, the picked proposal per label with p, p_hat, p_out, and timings."""
        return {
            "labels": self.labels,
            "clip_weight": self.clip_weight,
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


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to (B, C, H, W)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def ensemble(p: torch.Tensor, p_hat: torch.Tensor, clip_weight: float) -> torch.Tensor:
    """Eq. 3 as OVSeg and ODISE weight it: p_out = p^(1 - clip_weight) * p_hat^clip_weight, in log space.

    ``clip_weight`` is the exponent of CLIP's p_hat (Eq. 3's lambda is 1 - clip_weight).
    """
    eps = torch.finfo(p.dtype).tiny
    return torch.exp((1.0 - clip_weight) * p.clamp_min(eps).log() + clip_weight * p_hat.clamp_min(eps).log())


def semantic_inference(scores: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Mask2Former's semantic inference: (N, K) scores, (N, h, w) mask logits -> (K, h, w) class maps."""
    return torch.einsum("nk,nhw->khw", scores, mask_logits.sigmoid())


def _bilinear_taps(size_in: int, size_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices i0, i1 and weights w0, w1 of each output position along one axis, exactly as
    ``F.interpolate(mode="bilinear", align_corners=False)`` computes them for a given output size."""
    scale = size_in / size_out
    source = ((torch.arange(size_out, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0.0)
    first = source.to(torch.int64).clamp_max(size_in - 1)  # truncation == floor for source >= 0
    second = (first + 1).clamp_max(size_in - 1)
    w1 = source - first
    return first, second, 1.0 - w1, w1


# Post-processing path choices, measured on CPU (benchmarks/README.md).
_PLAIN_MAX_CLASSES = 24  # up to this many classes the plain upsample + argmax is as fast (measured on CPU)
_PLAIN_UPSAMPLE_SHARE = 0.1  # boundary work (pixels x candidates) above this share of K*H*W: plain upsample
_NOISY_SHARE = 0.6  # more boundary pixels than this share of the image: plain upsample (trained models: ~5-30%)
_RUNNING_MAX_FROM = 32  # classes: from here on a running maximum beats max(0) on CPU
_CANDIDATE_BUCKETS = (2, 4, 8, 16, 32, 64, 128, 256, 1 << 62)  # upper candidate counts of the cell buckets


def argmax_over_classes(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(0)`` for (K, ...) scores, first index on ties, without a slow strided reduction.

    On CPU ``argmax(0)`` over a leading dimension is several times slower than ``max(0)``, and for many
    classes a running maximum over contiguous class slices is faster still.
    """
    if scores.shape[0] <= _RUNNING_MAX_FROM:
        return scores.max(0).indices
    best, index = scores[0].clone(), torch.zeros(scores.shape[1:], dtype=torch.int64, device=scores.device)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best  # strict: the first maximal class keeps ties
        best = torch.where(better, scores[k], best)
        index.masked_fill_(better, k)
    return index


def upsampled_argmax(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``upsample(maps[None], size)[0].argmax(0)`` for (K, h, w) maps, without the (K, H, W) tensor.

    Every output pixel is a convex combination of the 4 corners of one source cell (a 2x2 block).
    * Where the 4 corners share one argmax, that class wins the whole cell: a weighted sum of
      inequalities that all favour it.
    * Elsewhere (class boundaries) only classes whose best corner reaches the cell's floor - the
      largest worst-corner score of any class - can win, since some class scores at least the floor
      everywhere in the cell: typically a few of K. Only those are interpolated per pixel, with the
      same taps, weights and order of operations as ``F.interpolate``.
    The result equals the reference up to float rounding at exact ties. Cost: O(K*h*w + H*W + C*boundary
    pixels) instead of O(K*H*W) time and memory. Few classes or noise-like maps use the plain path
    (upsample, then :func:`argmax_over_classes`), which is as fast there.
    """
    num_classes, height, width = maps.shape
    if (height, width) == tuple(size) or num_classes <= _PLAIN_MAX_CLASSES:
        return argmax_over_classes(upsample(maps[None], size)[0])  # few classes: the plain path is as cheap
    y0, y1, wy0, wy1 = _bilinear_taps(height, size[0], maps.device)
    x0, x1, wx0, wx1 = _bilinear_taps(width, size[1], maps.device)
    down = (torch.arange(height, device=maps.device) + 1).clamp_max(height - 1)
    right = (torch.arange(width, device=maps.device) + 1).clamp_max(width - 1)
    best = argmax_over_classes(maps)  # (h, w)
    best_down = best[down]
    resolved = (best == best[:, right]) & (best == best_down) & (best == best_down[:, right])  # (h, w) per cell
    result = best[y0][:, x0]  # (H, W) right wherever the pixel's cell is resolved
    boundary = (~resolved)[y0][:, x0]  # (H, W)
    num_boundary = int(boundary.sum())
    if num_boundary == 0:
        return result
    if num_boundary > _NOISY_SHARE * boundary.numel():
        return argmax_over_classes(upsample(maps[None], size)[0])  # noise-like maps: the plain path is cheaper

    cells = torch.nonzero(~resolved.flatten()).flatten()  # (U,) flat ids of the unresolved cells
    rows, cols = cells // width, cells % width
    flat = maps.flatten(1)  # (K, h*w)
    corner_values = flat[:, torch.stack([rows * width + cols, rows * width + right[cols],
                                         down[rows] * width + cols, down[rows] * width + right[cols]])]  # (K, 4, U)
    highest = corner_values.amax(1)  # (K, U)
    candidate = highest >= corner_values.amin(1).amax(0)  # reaches the cell's floor: may win somewhere in it
    counts = candidate.sum(0)  # (U,)
    ranked = highest.masked_fill(~candidate, float("-inf"))
    slot = torch.full((height * width,), -1, dtype=torch.int64, device=maps.device)
    slot[cells] = torch.arange(cells.numel(), device=maps.device)
    ys, xs = torch.nonzero(boundary, as_tuple=True)
    pixel_cell = slot[y0[ys] * width + x0[xs]]  # (P,) index into the unresolved cells
    if int(counts[pixel_cell].sum()) + 4 * num_boundary > _PLAIN_UPSAMPLE_SHARE * result.numel() * num_classes:
        return argmax_over_classes(upsample(maps[None], size)[0])  # too many candidates: plain path is cheaper
    # Cells are bucketed by candidate count so that a few crowded cells do not pad every other one.
    low = 0
    for high in _CANDIDATE_BUCKETS:
        in_bucket = (counts > low) & (counts <= high)  # (U,)
        low = high
        if not bool(in_bucket.any()):
            continue
        bucket_cells = torch.nonzero(in_bucket).flatten()
        num_candidates = min(int(counts[bucket_cells].max()), num_classes)
        # (C, cells) candidate classes, ascending so that argmax resolves ties like the reference; cells
        # with fewer candidates are padded with classes that cannot win
        cell_classes = ranked[:, bucket_cells].topk(num_candidates, dim=0).indices.sort(dim=0).values
        position = torch.full_like(counts, -1)
        position[bucket_cells] = torch.arange(bucket_cells.numel(), device=maps.device)
        pixels = torch.nonzero(in_bucket[pixel_cell]).flatten()
        py, px = ys[pixels], xs[pixels]
        classes = cell_classes[:, position[pixel_cell[pixels]]]  # (C, P_bucket)
        row0, row1, col0, col1 = y0[py] * width, y1[py] * width, x0[px], x1[px]
        upper = flat[classes, row0 + col0] * wx0[px] + flat[classes, row0 + col1] * wx1[px]  # F.interpolate's order
        lower = flat[classes, row1 + col0] * wx0[px] + flat[classes, row1 + col1] * wx1[px]
        winner = argmax_over_classes(upper * wy0[py] + lower * wy1[py])  # (P_bucket,)
        result[py, px] = classes.gather(0, winner[None])[0]
    return result


_MASK_CHUNK = 4  # proposals upsampled at a time in soft_masks_on_grid (cache-sized, measured on CPU)
VIT_DENSE_SCALE = 0.5  # SAN-style: CLIP ViT sees half the stage-1 resolution (640 px -> 320 px, 20x20 tokens)


class Segmenter(nn.Module):
    """Stage 1 (``self.model``, a :class:`MaskProposalModel`) plus CLIP (``self.clip``) for both stages."""

    def __init__(self, config: SegmenterConfig, clip: CLIPModel | None = None, *, load_backbone_weights: bool = True) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.clip = clip if clip is not None else CLIPModel.build(config.clip)
        clip_visual = self.clip.model.visual if config.backbone.kind == "clip" else None
        self.model = build_mask_proposal_model(
            config, text_dim=self.clip.embed_dim, clip_visual=clip_visual, load_backbone_weights=load_backbone_weights
        )
        self.clip.requires_grad_(False)
        # Inference options (not part of the checkpoint). autocast_dtype: None = float32 everywhere; e.g.
        # torch.bfloat16 runs both image stages under torch.autocast (text embeddings stay float32).
        # vit_dense_scale: a ViT CLIP's dense stage-2 pass sees the image scaled by this factor, never
        # below the tower's native size (1.0 = the stage-1 image as is). Its cost grows with the square
        # of the token count; see benchmarks/README.md for the measured trade-off.
        self.autocast_dtype: torch.dtype | None = None
        self.vit_dense_scale: float = VIT_DENSE_SCALE
        self.eval()

    # ----------------------------------------------------------------------------------------- I/O
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, device: str | torch.device = "cpu") -> "Segmenter":
        """Load a bundled name ('pmp', 'baseline'), a local folder, or a Hub repo id (None = bundled PMP)."""
        folder = resolve_checkpoint(name_or_path)
        config = load_config(folder)
        segmenter = cls(config, load_backbone_weights=False)  # the checkpoint holds every weight
        load_weights(segmenter, folder)
        return segmenter.to(device).eval()

    def save_pretrained(
        self, folder: str | Path, *, model_card: str | None = None, half_precision: bool = False, max_shard_size: int | str = MAX_SHARD_SIZE
    ) -> Path:
        """config.json + model.safetensors (split into shards over ``max_shard_size``) + README.md."""
        return save_checkpoint(
            self, self.config, folder, model_card=model_card, half_precision=half_precision, max_shard_size=max_shard_size
        )

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool = False, model_card: str | None = None) -> str:
        """Upload config.json, model.safetensors and the model card to a Hub model repo; returns its URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, model_card=model_card)
            api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model", commit_message="Upload PMP segmenter")
        return f"https://huggingface.co/{repo_id}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ----------------------------------------------------------------------------------- inference
    def forward(self, image: Any, prompts: str | list[str], **options: Any) -> SegmentationResult:
        """Parse ``prompts`` (a comma/semicolon/newline list or a caption), enforce the limits, segment."""
        started = time.perf_counter()
        labels = parse_prompts(prompts, max_prompts=self.config.max_prompts, max_chars=self.config.max_prompt_chars)
        self.check_token_limit(labels)
        return self.segment(image, labels, _parse_seconds=time.perf_counter() - started, **options)

    def check_token_limit(self, labels: list[str]) -> None:
        """Every filled template must fit the text tower's context; say which prompt does not."""
        limit = self.clip.context_length
        templates = tuple(self.config.clip.templates)
        # labels the CLIP encoded before with these templates fit: no need to tokenise them again
        known = self.clip.cached_labels(labels) if templates == tuple(self.clip.config.templates) else set()
        for label in labels:
            if label in known:
                continue
            longest = max(self.clip.count_tokens(t.replace("{}", label)) for t in templates)
            if longest > limit:
                raise PromptError(
                    f"prompt {label!r} is too long for the text encoder: {longest} tokens with its template, "
                    f"at most {limit} are accepted; shorten it"
                )

    def segment(
        self,
        image: Any,
        labels: list[str],
        *,
        clip_weight: float | None = None,
        stage2_mode: str | None = None,
        mask_threshold: float | None = None,
        unclaimed_threshold: float | None = None,
        image_size: int | None = None,
        _parse_seconds: float = 0.0,
    ) -> SegmentationResult:
        """Segment ``image`` with ``labels`` used as given (no parsing, no prompt-count limit).

        ``clip_weight``: Eq. 3's exponent of CLIP's p_hat (default: the config's, 0.65).
        ``mask_threshold``: binarises the picked masks (:meth:`SegmentationResult.picked_mask`).
        ``unclaimed_threshold``: None (default, Mask2Former's inference) labels every pixel by the argmax;
        a value in (0, 1) marks pixels whose best proposal probability is below it as -1 (a display option).
        """
        self._check_combine_options(clip_weight, mask_threshold, unclaimed_threshold)
        stages = self.run_stages(image, labels, stage2_mode=stage2_mode, image_size=image_size)
        stages.timings["text"] += _parse_seconds
        return self.combine(stages, clip_weight=clip_weight, mask_threshold=mask_threshold, unclaimed_threshold=unclaimed_threshold)

    @torch.inference_mode()
    def run_stages(
        self, image: Any, labels: list[str], *, stage2_mode: str | None = None, image_size: int | None = None
    ) -> "StageOutputs":
        """Both stages for one image: stage-1 p and mask logits (Eq. 1), CLIP's p_hat (Eq. 2)."""
        if not labels:
            raise ValueError("no labels given: pass at least one class name")
        cfg = self.config
        stage2_mode = stage2_mode or cfg.stage2_mode
        if stage2_mode not in STAGE2_MODES:
            raise ValueError(f"stage2_mode must be one of {', '.join(STAGE2_MODES)}, got {stage2_mode!r}")
        timings: dict[str, float] = {}

        start = time.perf_counter()
        text = self.clip.encode_text(list(labels)).to(self.device)  # (K, C)
        timings["text"] = self._elapsed(start)

        start = time.perf_counter()
        pil = load_image(image)
        pixels, valid_hw = self.preprocess(pil, image_size or cfg.image_size)  # (1, 3, Hp, Wp) in [0, 1]
        reuse_trunk = stage2_mode == "pool" and self.can_reuse_trunk(pixels, valid_hw)
        with self._autocast():
            outputs = self.model(
                self.normalize(pixels, cfg.pixel_mean, cfg.pixel_std), text[None], return_features=reuse_trunk
            )
        probs = outputs["pred_logits"][0].float().softmax(-1)  # (N, K + 1)
        p, no_object = probs[:, :-1], probs[:, -1]
        mask_logits = outputs["pred_masks"][0].float()  # (N, Hp/4, Wp/4)
        mask_h = round(mask_logits.shape[-2] * valid_hw[0] / pixels.shape[-2])
        mask_w = round(mask_logits.shape[-1] * valid_hw[1] / pixels.shape[-1])
        mask_logits = mask_logits[:, : max(mask_h, 1), : max(mask_w, 1)]  # drop the padding
        timings["stage1"] = self._elapsed(start)

        start = time.perf_counter()
        trunk = outputs["backbone_features"][-1] if reuse_trunk else None
        with self._autocast():
            p_hat = self.classify_proposals(pixels, valid_hw, mask_logits, text, p, stage2_mode, trunk=trunk)
        timings["stage2"] = self._elapsed(start)
        return StageOutputs(list(labels), p, p_hat.float(), no_object, mask_logits, (pil.height, pil.width), stage2_mode, timings)

    @torch.inference_mode()
    def combine(
        self,
        stages: "StageOutputs",
        *,
        clip_weight: float | None = None,
        mask_threshold: float | None = None,
        unclaimed_threshold: float | None = None,
    ) -> SegmentationResult:
        """Eq. 3 and Mask2Former's semantic inference on the outputs of :meth:`run_stages` (see :meth:`segment`)."""
        self._check_combine_options(clip_weight, mask_threshold, unclaimed_threshold)
        clip_weight = self.config.clip_weight if clip_weight is None else float(clip_weight)
        mask_threshold = self.config.mask_threshold if mask_threshold is None else float(mask_threshold)
        start = time.perf_counter()
        scores = ensemble(stages.p, stages.p_hat, clip_weight)
        height, width = stages.image_size
        semantic = upsampled_argmax(semantic_inference(scores, stages.mask_logits), (height, width))  # (H, W)
        if unclaimed_threshold is not None:
            best_mask = upsample(stages.mask_logits.amax(0)[None, None], (height, width))[0, 0].sigmoid()
            semantic = torch.where(best_mask >= unclaimed_threshold, semantic, torch.full_like(semantic, -1))
        best_score, best_index = scores.max(0)  # per label: the proposal that represents it
        selected = [(int(i), float(s)) for i, s in zip(best_index, best_score)]
        timings = dict(stages.timings)
        timings["post"] = self._elapsed(start)
        timings["total"] = sum(timings.values())

        return SegmentationResult(
            labels=list(stages.labels),
            semantic=semantic.cpu().numpy().astype(np.int64),
            p=stages.p.cpu().numpy(),
            p_hat=stages.p_hat.cpu().numpy(),
            p_out=scores.cpu().numpy(),
            selected=selected,
            timings=timings,
            clip_weight=clip_weight,
            stage2_mode=stages.stage2_mode,
            mask_threshold=mask_threshold,
            no_object=stages.no_object.cpu().numpy(),
            mask_logits=stages.mask_logits.cpu(),
            image_size=(height, width),
        )

    @staticmethod
    def _check_combine_options(clip_weight: float | None, mask_threshold: float | None, unclaimed_threshold: float | None) -> None:
        if clip_weight is not None and not 0.0 <= float(clip_weight) <= 1.0:
            raise ValueError(f"clip_weight must be in [0, 1], got {clip_weight}")
        if mask_threshold is not None and not 0.0 < float(mask_threshold) < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
        if unclaimed_threshold is not None and not 0.0 < float(unclaimed_threshold) < 1.0:
            raise ValueError(f"unclaimed_threshold must be None or in (0, 1), got {unclaimed_threshold}")

    def classify_proposals(
        self,
        pixels: torch.Tensor,
        valid_hw: tuple[int, int],
        mask_logits: torch.Tensor,
        text: torch.Tensor,
        p: torch.Tensor,
        stage2_mode: str,
        trunk: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stage 2 (Eq. 2): p_hat (N, K) from CLIP.

        ``pool`` runs CLIP's image tower once and mask-pools its dense features; ``trunk`` (the CLIP
        ResNet's layer-4 map that stage 1 already computed on the same pixels, see
        :meth:`can_reuse_trunk`) replaces that pass.
        ``crop`` (OVSeg) runs the tower once per proposal crop, so only the ``crop_top_k`` proposals with
        the highest stage-1 score are upsampled and cropped; the rest keep p_hat = p, which leaves their
        ensemble score equal to p.
        """
        image = pixels[..., : valid_hw[0], : valid_hw[1]]  # (1, 3, H, W) in [0, 1]
        if stage2_mode == "pool":
            if trunk is not None:
                dense = self.clip.dense_features_from_trunk(trunk)  # (1, C, h, w)
            else:
                dense = self.clip.dense_features(self.normalize(self.dense_input(image), self.clip.mean, self.clip.std))
            masks = self.soft_masks_on_grid(mask_logits, valid_hw, tuple(dense.shape[-2:]))  # (N, h, w)
            return self.clip.pool_classify(dense, masks[None], text)[0].to(p.dtype)
        top_k = min(self.config.crop_top_k, mask_logits.shape[0])
        indices = p.max(1).values.topk(top_k).indices
        masks = upsample(mask_logits[indices][None], valid_hw)[0].sigmoid()  # (top_k, H, W)
        p_hat = p.clone()
        p_hat[indices] = self.clip.crop_classify(image[0], masks, text).to(p.dtype)
        return p_hat

    @staticmethod
    def soft_masks_on_grid(mask_logits: torch.Tensor, valid_hw: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
        """(N, h', w') mask logits -> sigmoid of their image-size upsampling, area-averaged onto the (h, w) grid.

        What :meth:`CLIPModel.pool_classify` does to full-size soft masks, a few proposals at a time: the
        same values without the (N, H, W) tensor (100 x 640 x 640 floats = 164 MB), about 2x faster.
        Returns the full-size masks when the grid is larger than the image (pool_classify grows them).
        """
        if grid[0] > valid_hw[0] or grid[1] > valid_hw[1]:
            return upsample(mask_logits[None], valid_hw)[0].sigmoid()
        pooled = []
        for chunk in mask_logits.split(_MASK_CHUNK):
            soft = upsample(chunk[None], valid_hw).sigmoid_()  # (1, n, H, W)
            pooled.append(F.adaptive_avg_pool2d(soft, grid)[0] if tuple(valid_hw) != tuple(grid) else soft[0])
        return torch.cat(pooled)

    def can_reuse_trunk(self, pixels: torch.Tensor, valid_hw: tuple[int, int]) -> bool:
        """True when stage 1's backbone is this CLIP's ResNet tower run on exactly the pixels (no padding,
        same normalisation) that the dense stage-2 pass would see, so its layer-4 map can be reused."""
        return (
            self.config.backbone.kind == "clip"
            and isinstance(self.clip.model.visual, ModifiedResNet)
            and tuple(pixels.shape[-2:]) == tuple(valid_hw)
            and tuple(self.config.pixel_mean) == tuple(self.clip.mean)
            and tuple(self.config.pixel_std) == tuple(self.clip.std)
        )

    def dense_input(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) image in [0, 1] -> the image CLIP's dense pass sees.

        ResNet towers get it as is. A ViT tower's cost grows with the square of its token count, so
        the image is scaled by ``vit_dense_scale`` (never below the tower's native size) to a multiple
        of the patch size.
        """
        visual = self.clip.model.visual
        if not isinstance(visual, VisionTransformer) or self.vit_dense_scale >= 1.0:
            return image
        patch = visual.patch_size[0] if isinstance(visual.patch_size, (tuple, list)) else int(visual.patch_size)
        height, width = image.shape[-2:]
        longer = max(height, width)
        target = max(self.clip.image_size, round(longer * self.vit_dense_scale))
        if target >= longer:
            return image
        size = tuple(max(patch, round(side * target / longer / patch) * patch) for side in (height, width))
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)

    def _elapsed(self, start: float) -> float:
        """Seconds since ``start``; on a GPU after waiting for the queued kernels, so that each stage's
        time is its own and not the next stage's."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def _autocast(self) -> torch.autocast:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def preprocess(self, image: Image.Image, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize so the longer side is ``size``, to [0, 1] float, pad bottom/right to a multiple of 32.

        Returns (1, 3, Hp, Wp) and the (H, W) of the image inside the padding.
        """
        scale = size / max(image.width, image.height)
        width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        resized = image.resize((width, height), Image.BILINEAR) if (width, height) != image.size else image
        array = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy())  # (H, W, 3)
        pixels = array.permute(2, 0, 1).float().div_(255.0)[None]  # (1, 3, H, W)
        pad_h, pad_w = (-height) % 32, (-width) % 32
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
        return pixels.to(self.device), (height, width)

    @staticmethod
    def normalize(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
        mean_t = torch.tensor(mean, device=pixels.device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean_t) / std_t
