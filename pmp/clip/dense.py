"""Per-pixel CLIP embeddings for stage 2's mask pooling (MaskCLIP's value-path trick).

One image forward gives an embedding per stride-32 cell (ResNet) or patch (ViT) in CLIP's joint space;
a proposal is then classified by the mask-weighted mean of these (:func:`pmp.stage2.pool_classify`),
at a cost that does not grow with the number of proposals. Adapted from MaskCLIP (Zhou et al., 2022).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn

from pmp.modeling.heads import binary_mask_pool


class DenseFeatures:
    """The dense-image half of :class:`pmp.clip.CLIPModel` (a mixin: it uses ``model`` and ``device``)."""

    def dense_features(self, images: Tensor) -> Tensor:
        """(B,3,H,W) CLIP-normalised images -> (B,C,h,w) per-pixel joint-space embeddings, L2-normalised.

        ModifiedResNet (h = H/32): MaskCLIP — the attention pool's value and output projections applied
        to every layer-4 position (query/key and the positional embedding skipped), i.e. what the pooled
        token would be if each position attended only to itself. Any input size works.
        ViT (h = H/patch): positional embedding interpolated (bicubic) to the input grid, all blocks
        but the last as usual; in the last block each patch token attends only to itself (MaskCLIP's
        value path: residual + out_proj(v_proj(ln_1 x)), then the MLP), then ln_post and proj.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"dense_features takes (B,3,H,W) images, got shape {tuple(images.shape)}")
        visual = self.open_clip.visual
        images = images.to(device=self.device)
        if isinstance(visual, ModifiedResNet):
            dense = self._dense_resnet(visual, images)
        elif isinstance(visual, VisionTransformer) and visual.attn_pool is None:
            dense = self._dense_vit(visual, images)
        else:
            raise NotImplementedError(
                f"dense_features supports open_clip ModifiedResNet and VisionTransformer (without an "
                f"attentional pooler) image towers, not {type(visual).__name__}; use stage2_mode='crop'"
            )
        return F.normalize(dense, dim=1)

    def dense_features_from_trunk(self, trunk: Tensor) -> Tensor:
        """(B,D,h,w) layer-4 output of this CLIP's ModifiedResNet -> (B,C,h,w) like :meth:`dense_features`.

        For a stage 1 that already ran this very image tower on the same pixels (FC-CLIP's frozen
        backbone, ``backbone.kind="clip"``): only the MaskCLIP head is left to run, instead of the whole
        tower a second time. Equal to ``dense_features(images)`` when ``trunk`` came from the same
        CLIP-normalised ``images``.
        """
        visual = self.open_clip.visual
        if not isinstance(visual, ModifiedResNet):
            raise NotImplementedError(
                f"dense_features_from_trunk needs an open_clip ModifiedResNet image tower, not {type(visual).__name__}"
            )
        if trunk.ndim != 4:
            raise ValueError(
                f"dense_features_from_trunk takes (B,D,h,w) layer-4 features, got shape {tuple(trunk.shape)}"
            )
        return F.normalize(
            self._maskclip_head(visual, trunk.to(device=self.device, dtype=visual.conv1.weight.dtype)), dim=1
        )

    def convnext_trunk(self, images: Tensor) -> Tensor:
        """(B,3,H,W) CLIP-normalised images -> (B,D,H/32,W/32): a timm ConvNeXt tower's last stage, the map
        FC-CLIP pools (``extract_features_convnext``'s ``clip_vis_dense``, before ``norm_pre``)."""
        trunk = self._convnext(self.open_clip.visual).trunk
        x = trunk.stem(images.to(device=self.device, dtype=next(trunk.parameters()).dtype))
        for stage in trunk.stages:
            x = stage(x)
        return x

    def fcclip_pooled(self, trunk_map: Tensor, mask_logits: Tensor) -> Tensor:
        """FC-CLIP's out-of-vocabulary embeddings (``fcclip.py``, ``visual_prediction_forward_convnext``): the
        (1, D, h, w) trunk map through ``norm_pre``, pooled over each of the (N, H', W') masks where its logit
        (bilinearly resized to h x w) is above 0, then the tower's own head (norm, MLP projection) on each
        pooled vector -> (N, C), unnormalised. Pooling comes before the head, which is not linear."""
        visual = self._convnext(self.open_clip.visual)
        x = visual.trunk.norm_pre(trunk_map.to(device=self.device))
        pooled = binary_mask_pool(x, mask_logits[None].to(x))[0]  # (N, D)
        return visual.head(visual.trunk.head(pooled[:, :, None, None]))

    @staticmethod
    def _convnext(visual: nn.Module) -> nn.Module:
        if not hasattr(getattr(visual, "trunk", None), "stages") or not hasattr(visual, "head"):
            raise NotImplementedError(
                f"FC-CLIP's pooling needs an open_clip timm ConvNeXt image tower, not {type(visual).__name__}"
            )
        return visual

    @classmethod
    def _dense_resnet(cls, visual: ModifiedResNet, images: Tensor) -> Tensor:
        x = images.to(visual.conv1.weight.dtype)
        x = visual.stem(x)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))  # (B, 32*width, h, w)
        return cls._maskclip_head(visual, x)

    @staticmethod
    def _maskclip_head(visual: ModifiedResNet, x: Tensor) -> Tensor:
        """(B, D, h, w) layer-4 features -> (B, C, h, w): the attention pool's value and output projections."""
        pool = visual.attnpool
        x = x.permute(0, 2, 3, 1)  # (B, h, w, D)
        x = pool.c_proj(pool.v_proj(x))  # (B, h, w, C)
        return x.permute(0, 3, 1, 2)

    @staticmethod
    def _dense_vit(visual: VisionTransformer, images: Tensor) -> Tensor:
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, W, gh, gw)
        batch, width, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, W)
        pos = visual.positional_embedding.to(x.dtype)
        cls_pos, grid_pos = pos[:1], pos[1:]
        g0, g1 = visual.grid_size
        if (gh, gw) != (g0, g1):
            grid_pos = grid_pos.reshape(1, g0, g1, width).permute(0, 3, 1, 2)
            grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode="bicubic", align_corners=False)
            grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(gh * gw, width)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, width).expand(batch, 1, width)
        x = torch.cat([cls, x], dim=1) + torch.cat([cls_pos, grid_pos])[None]  # (B, 1+gh*gw, W)
        x = visual.ln_pre(x)
        blocks = visual.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        last = blocks[-1]
        if (
            isinstance(last, ResidualAttentionBlock)
            and getattr(last.attn, "_qkv_same_embed_dim", False)
            and not hasattr(last, "ln_1_kv")
        ):
            attn = last.attn
            w_v = attn.in_proj_weight[2 * width :]
            b_v = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
            v = F.linear(last.ln_1(x), w_v, b_v)
            x = x + last.ls_1(attn.out_proj(v))
            x = x + last.ls_2(last.mlp(last.ln_2(x)))
        else:  # custom blocks: run as trained
            x = last(x)
        x = visual.ln_post(x[:, 1:])  # patch tokens: (B, gh*gw, W)
        if visual.proj is not None:
            x = x @ visual.proj
        return x.transpose(1, 2).reshape(batch, -1, gh, gw)
