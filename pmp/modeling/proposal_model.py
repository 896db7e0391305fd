"""Stage 1 of the two-stage segmenter: prompt-guided mask proposals with open-vocabulary class logits.

backbone (strides 4-32) -> pixel decoder (mask features + 3 scales) -> transformer decoder (queries,
optionally reading the prompts: ``decoder.text_mode``, Eq. 5 / Fig. 5) -> per layer: class head (Eq. 1)
and mask head. Built from its parts, like segment-anything's ``Sam(image_encoder, prompt_encoder,
mask_decoder)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pmp.config import SegmenterConfig
from pmp.modeling.backbone import build_backbone
from pmp.modeling.heads import OpenVocabClassHead
from pmp.modeling.pixel_decoder import build_pixel_decoder
from pmp.modeling.transformer_decoder import StandardTransformerDecoder, build_transformer_decoder


def build_mask_proposal_model(
    config: SegmenterConfig, text_dim: int, clip_visual: nn.Module | None = None, load_backbone_weights: bool = True
) -> "MaskProposalModel":
    """Stage 1 from the config: the one builder (as segment-anything's ``build_sam``).

    Args:
        config: the segmenter config; ``backbone``, ``pixel_decoder`` and ``decoder`` are used here.
        text_dim: the CLIP joint embedding dim C of the text embeddings the model is given.
        clip_visual: the open_clip ``model.visual``; required iff ``config.backbone.kind == "clip"``. It is
            held, frozen, outside the model's parameters and state dict (it belongs to the CLIP model).
        load_backbone_weights: read ``config.backbone.pretrained_file``; pass False when the weights will
            come from a saved checkpoint anyway (the file may not exist on the loading machine).
    """
    config.validate()
    backbone = build_backbone(config, clip_visual, load_weights=load_backbone_weights)
    pixel_decoder = build_pixel_decoder(config.pixel_decoder, backbone.out_channels)
    # MaskFormer's decoder attends to the backbone's stride-32 map (TRANSFORMER_IN_FEATURE "res5" in OVSeg's
    # configs); Mask2Former's to the pixel decoder's three scales.
    maskformer = config.decoder.kind == "maskformer"
    memory_channels = backbone.out_channels[-1] if maskformer else config.pixel_decoder.conv_dim
    decoder = build_transformer_decoder(config.decoder, memory_channels, config.pixel_decoder.mask_dim, text_dim)
    head = OpenVocabClassHead(
        config.decoder.hidden_dim,
        text_dim,
        layers=config.decoder.class_head_layers,
        hidden=config.decoder.class_head_hidden_dim,
        fixed_scale=config.decoder.class_logit_scale,
        mask_pooling_dim=config.pixel_decoder.mask_dim if config.decoder.class_head_mask_pooling else None,
    )
    return MaskProposalModel(backbone, pixel_decoder, decoder, head)


@dataclass
class ImageFeatures:
    """Stage 1's prompt-independent features of a batch of images (:meth:`MaskProposalModel.encode_image`)."""

    backbone: list[torch.Tensor]  # [f4, f8, f16, f32]
    mask_features: torch.Tensor  # (B, mask_dim, H/4, W/4)
    multi_scale: list[torch.Tensor]  # what the transformer decoder attends to


class MaskProposalModel(nn.Module):
    """Mask proposals + Eq. 1 class logits for a set of prompts, from its four parts.

    backbone (features at strides 4-32) -> pixel decoder (mask features + 3 scales) -> transformer
    decoder (queries; the prompts enter here, ``decoder.text``) -> per layer: class head (Eq. 1) and
    the decoder's mask head. Build it with :func:`build_mask_proposal_model`.

    ``forward(images, text_embeds, text_mask=None)`` returns
        "pred_logits": (B, P, M+1) Eq. 1 logits; column M is no-object; padded prompt columns are -inf;
        "pred_masks": (B, P, H/4, W/4) mask logits;
        "aux_outputs": the same two keys for every earlier prediction, first to last
            (mask2former: the learnable queries before layer 1 + layers 1..L-1, i.e. L entries;
            maskformer: layers 1..L-1, i.e. L-1 entries);
        "proposal_mask": (B, P) bool, True = real proposal - only with ``text_mode`` "concat" or "text_queries",
            whose proposals include one per prompt (padded prompts give padded proposals);
        "backbone_features": [f4, f8, f16, f32] - only with ``return_features=True`` (the Segmenter reuses
            a CLIP backbone's stride-32 map for stage 2 instead of running the CLIP tower again).
    P = num_queries (N), except for the Fig. 5 ablations "concat" (P = N + M: the learnable queries first,
    then one proposal per prompt) and "text_queries" (P = M, no learnable queries).
    """

    def __init__(
        self, backbone: nn.Module, pixel_decoder: nn.Module, decoder: nn.Module, class_head: OpenVocabClassHead
    ):
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        self.class_head = class_head

    @property
    def text_dim(self) -> int:
        return self.class_head.text_dim

    @property
    def text_mode(self) -> str:
        return self.decoder.text.mode

    def forward(
        self,
        images: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        *,
        return_features: bool = False,
        return_aux: bool = True,
    ) -> dict:
        """images: (B, 3, H, W) normalised, H and W multiples of 32; text_embeds: (B, M, C) or (M, C);
        text_mask: (B, M) or (M,) bool, True = real prompt (None = all real); ``return_features`` adds
        the backbone's feature maps to the output. ``return_aux=False`` (inference) leaves out the earlier
        layers' predictions, which only the auxiliary losses read: their masks are still computed (each
        layer's masked attention needs the previous layer's), their class logits are not."""
        return self.decode(self.encode_image(images), text_embeds, text_mask, return_features=return_features,
                           return_aux=return_aux)  # fmt: skip

    def encode_image(self, images: torch.Tensor) -> "ImageFeatures":
        """The prompt-independent half of stage 1: backbone and pixel decoder. Reused by :meth:`decode` for any
        number of prompt sets (only the transformer decoder and the class head read the prompts)."""
        self._check_images(images)
        features = self.backbone(images)
        mask_features, multi_scale_features = self.pixel_decoder(features)
        if isinstance(self.decoder, StandardTransformerDecoder):
            multi_scale_features = [features[-1]]  # MaskFormer: TRANSFORMER_IN_FEATURE "res5"
        return ImageFeatures(features, mask_features, multi_scale_features)

    def decode(
        self,
        image: "ImageFeatures",
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        *,
        return_features: bool = False,
        return_aux: bool = True,
    ) -> dict:
        """The prompt-dependent half of stage 1 on :meth:`encode_image`'s output: :meth:`forward`'s dict."""
        features, mask_features, multi_scale_features = image.backbone, image.mask_features, image.multi_scale
        text_embeds, text_mask = self._batch_text(text_embeds, text_mask, mask_features.shape[0])
        decoded = self.decoder(multi_scale_features, mask_features, text_embeds, text_mask)
        predictions = [
            {
                "pred_logits": self.class_head(p.queries, text_embeds, text_mask, p.masks, mask_features),
                "pred_masks": p.masks,
            }
            for p in (decoded.predictions if return_aux else decoded.predictions[-1:])
        ]
        output = dict(predictions[-1])
        if return_aux:
            output["aux_outputs"] = predictions[:-1]
        if decoded.proposal_mask is not None:
            output["proposal_mask"] = decoded.proposal_mask
        if return_features:
            output["backbone_features"] = features
        return output

    @staticmethod
    def _check_images(images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        if images.shape[2] % 32 or images.shape[3] % 32:
            raise ValueError(
                f"image height and width must be multiples of 32 (pad them), got {tuple(images.shape[2:])}"
            )

    def _batch_text(
        self, text_embeds: torch.Tensor, text_mask: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> text_embeds (B, M, C) and text_mask (B, M) bool, checked against the image batch."""
        text_embeds = text_embeds.to(self.class_head.no_object_embed.dtype)  # e.g. a half-precision CLIP's output
        if text_embeds.dim() == 2:
            text_embeds = text_embeds.unsqueeze(0).expand(batch, -1, -1)
        if text_embeds.dim() != 3 or text_embeds.shape[0] != batch or text_embeds.shape[2] != self.text_dim:
            raise ValueError(
                f"text_embeds must be (M, {self.text_dim}) or ({batch}, M, {self.text_dim}), "
                f"got shape {tuple(text_embeds.shape)}"
            )
        num_prompts = text_embeds.shape[1]
        if num_prompts == 0:
            raise ValueError("at least one prompt is needed (text_embeds has M = 0)")
        if text_mask is None:
            return text_embeds, torch.ones(batch, num_prompts, dtype=torch.bool, device=text_embeds.device)
        if text_mask.dim() == 1:
            text_mask = text_mask.unsqueeze(0).expand(batch, -1)
        if tuple(text_mask.shape) != (batch, num_prompts):
            raise ValueError(
                f"text_mask must be ({batch}, {num_prompts}) like text_embeds, got shape {tuple(text_mask.shape)}"
            )
        return text_embeds, text_mask.to(device=text_embeds.device, dtype=torch.bool)
