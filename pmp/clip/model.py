"""The CLIP used by both stages: an open_clip CLIP plus what two-stage segmentation needs from it.

Adapted from open_clip's ``CLIP`` wrapper and MaskCLIP. One class, three homes: building it
(:mod:`pmp.clip.loading`), prompt embeddings with their cache (:mod:`pmp.clip.text`) and per-pixel
image embeddings (:mod:`pmp.clip.dense`). What stage 2 does with them (mask pooling, OVSeg's crops,
Eq. 2-3) is in :mod:`pmp.stage2`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer
from torch import Tensor, nn

from pmp.clip.dense import DenseFeatures
from pmp.clip.inference_tower import can_speed_up, inference_tower
from pmp.clip.loading import load_open_clip
from pmp.clip.mask_prompts import mask_prompted_image_features
from pmp.clip.text import EmbeddingCache, TextEmbeddings
from pmp.config import CLIP_MEAN, CLIP_STD, CLIPConfig
from pmp.images import normalize_pixels


class CLIPModel(TextEmbeddings, DenseFeatures, nn.Module):
    """An open_clip CLIP plus what two-stage open-vocabulary segmentation needs from it.

    ``.open_clip`` is the open_clip model (state-dict keys ``open_clip.*``). ``.mean``/``.std`` are the image
    normalisation the weights expect, ``.image_size`` the image tower's native square size,
    ``.embed_dim`` the joint embedding width and ``.tokenizer`` open_clip's tokenizer.

    Text cache: a bounded LRU keyed by ``(weights key, templates, prompt)`` holding each prompt's
    template-averaged normalised embedding (detached). The weights key combines a counter bumped
    whenever weights are loaded (``_load_from_state_dict``, which also runs when a parent module is
    loaded) or moved/cast (``_apply``) with the sum of the text parameters' in-place version counters,
    which optimizer steps and ``copy_`` bump; so a stale entry can only be served after writes that
    bypass autograd's version counter (``param.data.mul_``): call :meth:`clear_cache` after those.
    When gradients can flow into the text tower (grad mode on and a text parameter requires grad) the
    cache is bypassed entirely, so training gets a differentiable result.
    """

    def __init__(
        self,
        model: nn.Module,
        config: CLIPConfig,
        tokenizer: SimpleTokenizer,
        embed_dim: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        for template in config.templates:
            if template.count("{}") != 1:
                raise ValueError(f"CLIP template {template!r} must contain exactly one '{{}}' placeholder")
        if not config.templates:
            raise ValueError("CLIPConfig.templates is empty; give at least one template such as '{}'")
        if config.text_cache_size < 0:
            raise ValueError(f"CLIPConfig.text_cache_size must be >= 0, got {config.text_cache_size}")
        self.open_clip = model
        self.config = config
        self.tokenizer = tokenizer
        self.embed_dim = int(embed_dim)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        size = getattr(model.visual, "image_size", None)
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise ValueError(f"only square CLIP image towers are supported, got image_size={tuple(size)}")
            size = size[0]
        if size is None:
            raise ValueError(f"cannot tell the native image size of {type(model.visual).__name__}")
        self.image_size = int(size)
        self.context_length = int(getattr(model, "context_length", None) or tokenizer.context_length)
        self.cache = EmbeddingCache(config.text_cache_size)
        self._weights_version = 0
        self._inference_tower: tuple[tuple, nn.Module] | None = None  # (weights key, tower); not a submodule

    @classmethod
    def build(cls, cfg: CLIPConfig) -> "CLIPModel":
        """Build from the config; never downloads (see :func:`pmp.clip.loading.load_open_clip`)."""
        model, tokenizer, embed_dim, mean, std = load_open_clip(cfg)
        return cls(model, cfg, tokenizer, embed_dim=embed_dim, mean=mean, std=std)

    @property
    def device(self) -> torch.device:
        return self.open_clip.logit_scale.device

    @property
    def logit_scale(self) -> Tensor:
        """The CLIP's own logit multiplier, ``exp`` of its stored log-scale (a 0-d tensor)."""
        return self.open_clip.logit_scale.exp().reshape(())

    def normalize(self, images: Tensor) -> Tensor:
        """(B,3,H,W) RGB in [0, 1] -> normalised with this CLIP's mean/std."""
        return normalize_pixels(images, self.mean, self.std)

    def encode_crops(self, crops: Tensor, region_masks: Tensor | None = None) -> Tensor:
        """(B, 3, S, S) CLIP-normalised crops -> (B, C) unnormalised image embeddings, as ``encode_image``.

        With mask prompts (``config.mask_prompt_depth``) and the crops' (B, 1, S, S) ``region_masks``, the
        tokens outside each mask are the learned prompts (:mod:`pmp.clip.mask_prompts`, OVSeg's
        MASK_PROMPT_FWD); without masks the tower runs as it is.

        For inference (image tower in eval mode, no gradient wanted) a ModifiedResNet tower runs as
        :func:`pmp.clip.inference_tower.inference_tower`'s copy: the same embeddings to float rounding,
        with less work. The copy is rebuilt whenever the tower's weights or running statistics change
        (a weights key like the text cache's, over the image tower's tensors).
        """
        visual = self.open_clip.visual
        if region_masks is not None and self.config.mask_prompt_depth:
            return mask_prompted_image_features(visual, crops, region_masks)
        wants_grad = torch.is_grad_enabled() and any(p.requires_grad for p in visual.parameters())
        if visual.training or wants_grad or not can_speed_up(visual):
            return self.open_clip.encode_image(crops)
        tensors = [*visual.parameters(), *visual.buffers()]
        key = (self._weights_version, sum(t._version for t in tensors), str(self.device), str(tensors[0].dtype))
        if self._inference_tower is None or self._inference_tower[0] != key:
            self._inference_tower = (key, inference_tower(visual))
        return self._inference_tower[1](crops)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # Runs for this module whether load_state_dict is called on it or on a parent (the Segmenter).
        self._weights_version += 1
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "CLIPModel":
        # .to(device)/.half() replace parameter tensors: cached embeddings of the old ones are stale.
        self._weights_version += 1
        return super()._apply(fn, *args, **kwargs)
