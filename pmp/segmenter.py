"""The one inference API: ``Segmenter`` loads a model and runs both stages of the paper, keeping everything.

The pieces live where the paper puts them, and this module only orchestrates them:

* Eq. 1 (stage 1): :mod:`pmp.modeling` - every query q gives a mask M_q and class logits
  cos(e_q, t_k) / tau over the prompts and a no-object embedding; ``p`` is their softmax.
* Eq. 2 (stage 2): :func:`pmp.stage2.classify_proposals` - CLIP's ``p_hat`` for each proposal, by mask
  pooling (``pool``) or OVSeg's masked crops (``crop``; ``crop_views`` can add each crop's box).
* Eq. 3: :func:`pmp.stage2.ensemble` - p_out = p^(1 - w) * p_hat^w, w = ``clip_weight`` = 0.65 on the
  CLIP term as OVSeg and ODISE apply the paper's value (docs/method.md); ``clip_weight_unseen``
  gives prompts outside stage 1's ``training_names`` their own w, as FC-CLIP does (off by default).
* Mask2Former's semantic inference: :mod:`pmp.postprocess` - argmax at every pixel; the
  ``unclaimed_threshold`` display option marks pixels no proposal covers (off for reported numbers).
* Not the paper's: the flip test (``flip_test=True``, off by default) runs both stages on the mirrored
  image too and adds its class maps, mirrored back, before the argmax.

:meth:`Segmenter.segment` is :meth:`Segmenter.run_stages` (both stages: p, p_hat, mask logits) followed
by :meth:`Segmenter.combine` (Eq. 3 and post-processing), so a sweep over ``clip_weight`` reuses one
pass of both stages.

Speed (benchmarks/latency.py; figures in benchmarks/README.md): text embeddings are cached by the CLIP;
stage 2 ``pool`` runs one dense CLIP pass (none when stage 1's backbone is that CLIP tower on the same
pixels: its trunk is reused; a ViT sees the image at ``vit_dense_scale``); ``crop`` crops only the
``crop_top_k`` proposals; ``autocast_dtype`` opts into bfloat16/float16.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from PIL import Image, ImageOps
from torch import nn

from pmp.checkpoint import (
    CLIP_PREFIX,
    MAX_SHARD_SIZE,
    CheckpointError,
    file_sha256,
    load_config,
    load_weights,
    looks_like_hub_repo,
    open_clip_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from pmp.clip import CLIPModel
from pmp.clip.loading import read_weights_file
from pmp.config import AUTOCAST_NAMES, STAGE2_MODES, SegmenterConfig
from pmp.images import load_image, model_input_size, normalize_pixels
from pmp.modeling import build_mask_proposal_model
from pmp.modeling.proposal_model import ImageFeatures
from pmp.postprocess import semantic_map, upsample
from pmp.prompts import parse_prompts
from pmp.results import SegmentationResult, StageOutputs
from pmp.stage2 import VIT_DENSE_SCALE, classify_proposals, dense_map, ensemble, prompt_clip_weights

# Segmenter.autocast_dtype by name (pmp.config.AUTOCAST_NAMES): app.py, benchmarks.latency, train.evaluate.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    name: None if name == "none" else getattr(torch, name) for name in AUTOCAST_NAMES
}


@dataclass
class ImageState:
    """One image prepared by :meth:`Segmenter.set_image`: its input pixels, stage 1's prompt-independent
    features, and (at first use) CLIP's dense features for pooled stage 2 and the mirrored image's state."""

    image: Image.Image
    pixels: torch.Tensor  # (1, 3, Hp, Wp) in [0, 1], padded to a multiple of 32
    valid_hw: tuple[int, int]  # (H, W) inside the padding
    features: ImageFeatures
    options: tuple[int | None, str]  # (image_size, resize) it was prepared with
    _dense: dict[float, torch.Tensor] = field(default_factory=dict, repr=False)  # per vit_dense_scale
    _mirrored: "ImageState | None" = field(default=None, repr=False)
    # pmp.stage2.classify_proposals' crops of the last proposals, reused while they stay the same
    crop_cache: dict = field(default_factory=dict, repr=False)

    def trunk(self, segmenter: "Segmenter") -> torch.Tensor | None:
        """Stage 1's last backbone map when it is the CLIP tower's own on these pixels (pooled stage 2 reuses it)."""
        return self.features.backbone[-1] if segmenter.can_reuse_trunk(self.pixels, self.valid_hw) else None

    def dense(self, segmenter: "Segmenter") -> torch.Tensor:
        """(1, C, h, w) CLIP's per-pixel embeddings of this image, computed once per ``vit_dense_scale``."""
        scale = segmenter.vit_dense_scale
        if scale not in self._dense:
            image = self.pixels[..., : self.valid_hw[0], : self.valid_hw[1]]
            self._dense[scale] = dense_map(segmenter.clip, image, scale, self.trunk(segmenter))
        return self._dense[scale]

    def mirrored(self, segmenter: "Segmenter") -> "ImageState":
        """The state of this image mirrored left to right (the flip test), prepared once."""
        if self._mirrored is None:
            image_size, resize = self.options
            self._mirrored = segmenter.set_image(ImageOps.mirror(self.image), image_size=image_size, resize=resize)
        return self._mirrored


class Segmenter(nn.Module):
    """Stage 1 (``self.proposal_model``, a :class:`MaskProposalModel`; state-dict keys ``proposal_model.*``) plus
    CLIP (``self.clip``, keys ``clip.open_clip.*``) for both stages."""

    def __init__(
        self, config: SegmenterConfig, clip: CLIPModel | None = None, *, load_backbone_weights: bool = True
    ) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.clip = clip if clip is not None else CLIPModel.build(config.clip)
        clip_visual = self.clip.open_clip.visual if config.backbone.kind == "clip" else None
        self.proposal_model = build_mask_proposal_model(
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
    def from_pretrained(
        cls, name_or_path: str | Path | None = None, *, device: str | torch.device = "cpu"
    ) -> "Segmenter":
        """Load a bundled name ('pmp', 'baseline'), a local folder, or a Hub repo id (None = bundled PMP)."""
        folder = resolve_checkpoint(name_or_path)
        config = load_config(folder)
        # The checkpoint holds every weight, except a referenced CLIP's (config.clip.checkpoint), which the
        # CLIP loads from its own folder as it is built.
        referenced = bool(config.clip.checkpoint)
        try:
            segmenter = cls(config, load_backbone_weights=False)
        except (ValueError, FileNotFoundError) as error:  # a referenced CLIP that does not fit
            raise CheckpointError(f"{folder}: its CLIP {config.clip.checkpoint!r} cannot be loaded: {error}") from error
        load_weights(segmenter, folder, without=CLIP_PREFIX if referenced else None)
        return segmenter.to(device).eval()

    def save_pretrained(
        self,
        folder: str | Path,
        *,
        model_card: str | None = None,
        half_precision: bool | tuple[str, ...] = False,
        max_shard_size: int | str = MAX_SHARD_SIZE,
        standalone: bool = False,
    ) -> Path:
        """config.json + model.safetensors (split into shards over ``max_shard_size``) + README.md.

        A CLIP referenced by the config (:meth:`reference_clip`) is left out of the weights, unless
        ``standalone``: then the saved copy carries its CLIP and its config references nothing."""
        config = self.config
        if standalone:
            config = replace(config, clip=replace(config.clip, checkpoint=None, checkpoint_sha256=None))
        return save_checkpoint(
            self,
            config,
            folder,
            model_card_text=model_card,
            half_precision=half_precision,
            max_shard_size=max_shard_size,
            without=CLIP_PREFIX if config.clip.checkpoint else None,
        )

    def reference_clip(self, checkpoint: str | Path) -> None:
        """Make this segmenter's CLIP a reference to the open_clip folder ``checkpoint`` (a bundled name
        such as ``"tiny-clip"``, a local folder or a Hub repo id) instead of a copy of it: saved, the
        checkpoint leaves the ``clip.*`` weights out and loading reads them from that folder, pinned by the
        sha256 of its weights file. The bundled pair shares the bundled tiny CLIP this way.

        Refused (ValueError) unless the folder's weights are exactly this CLIP's, because a reference that
        loads other weights would change every p_hat."""
        weights = open_clip_weights(checkpoint)
        theirs = read_weights_file(weights)
        ours = self.clip.open_clip.state_dict()
        differing = sorted(set(ours) ^ set(theirs)) + [
            key
            for key in ours
            if key in theirs
            and (theirs[key].shape != ours[key].shape or not torch.equal(theirs[key].to(ours[key]), ours[key]))
        ]
        if differing:
            raise ValueError(
                f"{weights} is not this segmenter's CLIP ({len(differing)} tensors differ or are missing, e.g. "
                f"{', '.join(differing[:3])}): a reference to it would change the outputs"
            )
        clip = replace(self.config.clip, checkpoint=str(checkpoint), checkpoint_sha256=file_sha256(weights))
        self.config = replace(self.config, clip=clip)

    def push_to_hub(
        self, repo_id: str, *, token: str | None = None, private: bool = False, model_card: str | None = None
    ) -> str:
        """Upload config.json, model.safetensors and the model card to a Hub model repo; returns its URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        # A CLIP referenced by a bundled name or a local folder would not be found by whoever downloads
        # the checkpoint: the Hub copy carries it, unless the reference is itself a Hub repo.
        reference = self.config.clip.checkpoint
        standalone = not (reference and looks_like_hub_repo(reference))
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, model_card=model_card, standalone=standalone)
            api.upload_folder(
                repo_id=repo_id, folder_path=tmp, repo_type="model", commit_message="Upload PMP segmenter"
            )
        return f"https://huggingface.co/{repo_id}"

    @property
    def device(self) -> torch.device:
        return next(self.proposal_model.parameters()).device

    # ----------------------------------------------------------------------------------- inference
    def forward(self, image: Any, prompts: str | list[str], **options: Any) -> SegmentationResult:
        """Parse ``prompts`` (a comma/semicolon/newline list or a caption), enforce the limits, segment."""
        started = time.perf_counter()
        labels = parse_prompts(prompts, max_prompts=self.config.max_prompts, max_chars=self.config.max_prompt_chars)
        self.check_token_limit(labels)
        return self.segment(image, labels, _parse_seconds=time.perf_counter() - started, **options)

    def check_token_limit(self, labels: list[str]) -> None:
        """Every filled template must fit the text tower's context; PromptError says which prompt does not."""
        self.clip.check_fits(labels)

    def segment(
        self,
        image: Any,
        labels: list[str],
        *,
        clip_weight: float | None = None,
        clip_weight_unseen: float | None = None,
        stage2_mode: str | None = None,
        mask_threshold: float | None = None,
        unclaimed_threshold: float | None = None,
        image_size: int | None = None,
        flip_test: bool = False,
        resize: str = "long",
        _parse_seconds: float = 0.0,
    ) -> SegmentationResult:
        """Segment ``image`` with ``labels`` used as given (no parsing, no prompt-count limit).

        ``clip_weight``: Eq. 3's exponent of CLIP's p_hat (default: the config's, 0.65).
        ``clip_weight_unseen``: the exponent for prompts outside the config's ``training_names`` (default:
        the config's; None there = ``clip_weight`` for every prompt).
        ``mask_threshold``: binarises the picked masks (:meth:`SegmentationResult.picked_mask`).
        ``unclaimed_threshold``: None (default, Mask2Former's inference) labels every pixel by the argmax;
        a value in (0, 1) marks pixels whose best proposal probability is below it as -1 (a display option).
        ``flip_test``: also run both stages on the image mirrored left to right and add its class maps,
        mirrored back, before the argmax (:func:`pmp.postprocess.semantic_map`): twice the time, for a
        semantic map that no longer depends on the image's handedness. The proposals, p, p_hat and the
        picks stay the unmirrored view's. Off by default, and for every reported number unless said.
        ``resize``: which side ``image_size`` sets (:func:`pmp.images.model_input_size`; "short" is OVSeg's).
        """
        self._check_combine_options(clip_weight, mask_threshold, unclaimed_threshold, clip_weight_unseen)
        stages = self.run_stages(
            image, labels, stage2_mode=stage2_mode, image_size=image_size, flip_test=flip_test, resize=resize
        )
        stages.timings["text"] += _parse_seconds
        return self.combine(
            stages,
            clip_weight=clip_weight,
            clip_weight_unseen=clip_weight_unseen,
            mask_threshold=mask_threshold,
            unclaimed_threshold=unclaimed_threshold,
        )

    @torch.inference_mode()
    def run_stages(
        self,
        image: Any,
        labels: list[str],
        *,
        stage2_mode: str | None = None,
        image_size: int | None = None,
        flip_test: bool = False,
        resize: str = "long",
    ) -> "StageOutputs":
        """Both stages for one image: stage-1 p and mask logits (Eq. 1), CLIP's p_hat (Eq. 2).

        ``flip_test``: the same for the image mirrored left to right, kept as ``mirrored`` (see
        :meth:`segment`); the timings are those of both passes together."""
        if not labels:
            raise ValueError("no labels given: pass at least one class name")
        cfg = self.config
        stage2_mode = stage2_mode or cfg.stage2_mode
        if stage2_mode not in STAGE2_MODES:
            raise ValueError(f"stage2_mode must be one of {', '.join(STAGE2_MODES)}, got {stage2_mode!r}")
        if flip_test:
            state = self._state(image, image_size, resize)
            stages = self.run_stages(state, labels, stage2_mode=stage2_mode)
            mirrored = self.run_stages(state.mirrored(self), labels, stage2_mode=stage2_mode)
            timings = {key: seconds + mirrored.timings[key] for key, seconds in stages.timings.items()}
            return replace(stages, timings=timings, mirrored=mirrored)
        timings: dict[str, float] = {}

        start = time.perf_counter()
        text = self.clip.encode_text(list(labels)).to(self.device)  # (K, C)
        timings["text"] = self._elapsed(start)

        start = time.perf_counter()
        state = self._state(image, image_size, resize)  # stage 1's image half: once per image
        pixels, valid_hw = state.pixels, state.valid_hw
        with self._autocast():
            outputs = self.proposal_model.decode(state.features, text[None], return_aux=False)
        probs = outputs["pred_logits"][0].float().softmax(-1)  # (N, K + 1)
        p, no_object = probs[:, :-1], probs[:, -1]
        mask_logits = outputs["pred_masks"][0].float()  # (N, Hp/4, Wp/4)
        mask_h = round(mask_logits.shape[-2] * valid_hw[0] / pixels.shape[-2])
        mask_w = round(mask_logits.shape[-1] * valid_hw[1] / pixels.shape[-1])
        mask_logits = mask_logits[:, : max(mask_h, 1), : max(mask_w, 1)]  # drop the padding
        timings["stage1"] = self._elapsed(start)

        start = time.perf_counter()
        with self._autocast():
            dense = state.dense(self) if stage2_mode == "pool" and cfg.pool_form == "maskclip" else None
            p_hat = classify_proposals(
                self.clip,
                pixels,
                valid_hw,
                mask_logits,
                text,
                p,
                stage2_mode,
                crop_top_k=cfg.crop_top_k,
                crop_views=cfg.crop_views,
                crop_geometry=(cfg.crop_box, cfg.crop_mask_threshold),
                vit_dense_scale=self.vit_dense_scale,
                trunk=state.trunk(self) if stage2_mode == "pool" else None,
                pool_form=cfg.pool_form,
                dense=dense,
                crop_cache=state.crop_cache,
            )
        timings["stage2"] = self._elapsed(start)
        size = (state.image.height, state.image.width)
        return StageOutputs(list(labels), p, p_hat.float(), no_object, mask_logits, size, stage2_mode, timings)

    @torch.inference_mode()
    def set_image(self, image: Any, *, image_size: int | None = None, resize: str = "long") -> ImageState:
        """Prepare ``image`` for any number of prompt sets, as segment-anything's ``set_image``: the parts of
        both stages that do not read the prompts (backbone, pixel decoder, and CLIP's dense features at first
        use) run once here; :meth:`segment` and :meth:`run_stages` take the returned state in place of the
        image and run only what the prompts change. Outputs equal those of the image itself."""
        pil = load_image(image)
        pixels, valid_hw = self.preprocess(pil, image_size or self.config.image_size, resize)
        with self._autocast():
            features = self.proposal_model.encode_image(
                normalize_pixels(pixels, self.config.pixel_mean, self.config.pixel_std)
            )
        return ImageState(pil, pixels, valid_hw, features, (image_size, resize))

    def _state(self, image: Any, image_size: int | None, resize: str) -> ImageState:
        if isinstance(image, ImageState):
            return image
        return self.set_image(image, image_size=image_size, resize=resize)

    @torch.inference_mode()
    def combine(
        self,
        stages: "StageOutputs",
        *,
        clip_weight: float | None = None,
        clip_weight_unseen: float | None = None,
        mask_threshold: float | None = None,
        unclaimed_threshold: float | None = None,
    ) -> SegmentationResult:
        """Eq. 3 and Mask2Former's semantic inference on the outputs of :meth:`run_stages` (see :meth:`segment`)."""
        self._check_combine_options(clip_weight, mask_threshold, unclaimed_threshold, clip_weight_unseen)
        cfg = self.config
        clip_weight = cfg.clip_weight if clip_weight is None else float(clip_weight)
        if clip_weight_unseen is None:
            clip_weight_unseen = cfg.clip_weight_unseen
        elif not cfg.training_names:
            raise ValueError(
                "clip_weight_unseen needs the names stage 1 was trained on, and this model's config has no "
                "training_names"
            )
        mask_threshold = cfg.mask_threshold if mask_threshold is None else float(mask_threshold)
        start = time.perf_counter()
        weights = prompt_clip_weights(stages.labels, clip_weight, clip_weight_unseen, cfg.training_names)  # (K,)
        scores = ensemble(stages.p, stages.p_hat, weights, cfg.ensemble)
        height, width = stages.image_size
        mirrored = stages.mirrored
        if mirrored is not None:
            mirrored = (ensemble(mirrored.p, mirrored.p_hat, weights, cfg.ensemble), mirrored.mask_logits)
        semantic = semantic_map(scores, stages.mask_logits, (height, width), mirrored=mirrored)  # (H, W)
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
            clip_weight_unseen=None if clip_weight_unseen is None else float(clip_weight_unseen),
        )

    @staticmethod
    def _check_combine_options(
        clip_weight: float | None,
        mask_threshold: float | None,
        unclaimed_threshold: float | None,
        clip_weight_unseen: float | None = None,
    ) -> None:
        for name, weight in (("clip_weight", clip_weight), ("clip_weight_unseen", clip_weight_unseen)):
            if weight is not None and not 0.0 <= float(weight) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {weight}")
        if mask_threshold is not None and not 0.0 < float(mask_threshold) < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
        if unclaimed_threshold is not None and not 0.0 < float(unclaimed_threshold) < 1.0:
            raise ValueError(f"unclaimed_threshold must be None or in (0, 1), got {unclaimed_threshold}")

    def can_reuse_trunk(self, pixels: torch.Tensor, valid_hw: tuple[int, int]) -> bool:
        """Whether stage 1's backbone is this CLIP's ResNet (or ConvNeXt pooled FC-CLIP's way) run on exactly the
        pixels (no padding, same normalisation) that stage 2 would see, so its last-stage map can be reused."""
        return (
            self.config.backbone.kind == "clip"
            and (isinstance(self.clip.open_clip.visual, ModifiedResNet) or self.config.pool_form == "fcclip")
            and tuple(pixels.shape[-2:]) == tuple(valid_hw)
            and tuple(self.config.pixel_mean) == tuple(self.clip.mean)
            and tuple(self.config.pixel_std) == tuple(self.clip.std)
        )

    def _elapsed(self, start: float) -> float:
        """Seconds since ``start``; on a GPU after waiting for the queued kernels, so that each stage's
        time is its own and not the next stage's."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def _autocast(self) -> torch.autocast:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def preprocess(self, image: Image.Image, size: int, resize: str = "long") -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize to :func:`pmp.images.model_input_size`, to [0, 1] float, pad bottom/right to a multiple of 32.

        Returns (1, 3, Hp, Wp) and the (H, W) of the image inside the padding.
        """
        width, height = model_input_size(image.width, image.height, size, resize)
        resized = image.resize((width, height), Image.BILINEAR) if (width, height) != image.size else image
        array = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy())  # (H, W, 3)
        pixels = array.permute(2, 0, 1).float().div_(255.0)[None]  # (1, 3, H, W)
        pad_h, pad_w = (-height) % 32, (-width) % 32
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
        return pixels.to(self.device), (height, width)
