"""FC-CLIP's backbone: the frozen image tower of the CLIP used in stage 2, as features at strides 4-32.

Its parameters belong to :class:`pmp.clip.CLIPModel` (the Segmenter saves them under ``clip.*``), so each
backbone here holds the tower in a plain attribute: not a registered submodule, absent from
``state_dict()``, not moved by ``.to()``, and run under ``torch.no_grad``. Three tower kinds: open_clip's
ModifiedResNet, its ViT (with a trainable neck) and a timm ConvNeXt (FC-CLIP's ConvNeXt-Large).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pmp.modeling.layers import group_norm

STRIDES: tuple[int, ...] = (4, 8, 16, 32)


class _FrozenCLIPTower(nn.Module):
    """Holds a CLIP image tower without registering it, and keeps it in eval mode."""

    def __init__(self, clip_visual: nn.Module):
        super().__init__()
        self._clip_visual = [clip_visual]  # a list hides it from nn.Module: not in state_dict / parameters / .to()
        clip_visual.requires_grad_(False)
        clip_visual.eval()

    @property
    def clip_visual(self) -> nn.Module:
        return self._clip_visual[0]

    def train(self, mode: bool = True) -> "_FrozenCLIPTower":
        super().train(mode)
        self.clip_visual.eval()  # frozen BatchNorm / no dropout, whatever the stage-1 mode
        return self

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        weight = next(self.clip_visual.parameters())
        if images.device != weight.device:
            raise ValueError(
                f"images are on {images.device} but the CLIP image tower is on {weight.device}: the tower is "
                "owned by the CLIP model and is not moved with MaskProposalModel.to(); move both"
            )
        return images.to(weight.dtype)


class CLIPResNetBackbone(_FrozenCLIPTower):
    """FC-CLIP's backbone: the frozen CLIP ModifiedResNet's layer1..layer4 (strides 4, 8, 16, 32).

    The stem (three convs + avg-pool) brings the image to stride 4; layer1 keeps that stride and each
    later layer halves it.
    """

    def __init__(self, clip_visual: nn.Module):
        super().__init__(clip_visual)
        self.out_channels: list[int] = [_last_out_channels(getattr(clip_visual, f"layer{i}")) for i in range(1, 5)]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        visual = self.clip_visual
        x = self._input(images)
        x = visual.stem(x)
        features = []
        for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = layer(x)
            features.append(x.to(images.dtype))
        return features


def _last_out_channels(layer: nn.Module) -> int:
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class CLIPViTBackbone(_FrozenCLIPTower):
    """A frozen open_clip ViT tower turned into a 4-scale pyramid (a simplified ViTDet neck).

    The patch tokens of the last transformer block (before ``ln_post``) form one map at stride
    ``patch_size``; its position embedding is bicubically resized to the input's token grid. The trainable
    neck makes strides 4-32 from it: 2x transposed convs to go finer, max-pooling to go coarser, then a
    1x1 conv + GroupNorm. The patch size must be a power of two between 8 and 32.
    Channels: stride 4 -> width/4, stride 8 -> width/2, strides 16 and 32 -> width.
    """

    def __init__(self, clip_visual: nn.Module):
        super().__init__(clip_visual)
        patch = clip_visual.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
        if patch not in (8, 16, 32):
            raise ValueError(
                f"CLIP ViT backbone needs a patch size of 8, 16 or 32 (image sizes are multiples of 32), got {patch}"
            )
        self.patch_size = patch
        width = clip_visual.conv1.out_channels
        self.out_channels = [max(width // 4, 1), max(width // 2, 1), width, width]
        self.neck = nn.ModuleList(
            self._level(width, patch, stride, out) for stride, out in zip(STRIDES, self.out_channels)
        )

    @staticmethod
    def _level(width: int, patch: int, stride: int, out_channels: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        channels = width
        if stride < patch:
            steps = int(math.log2(patch // stride))
            for step in range(steps):
                next_channels = max(channels // 2, 1)
                layers.append(nn.ConvTranspose2d(channels, next_channels, 2, stride=2))
                if step < steps - 1:
                    layers += [group_norm(next_channels), nn.GELU()]
                channels = next_channels
        elif stride > patch:
            layers.append(nn.MaxPool2d(stride // patch))
        layers += [nn.Conv2d(channels, out_channels, 1, bias=False), group_norm(out_channels)]
        return nn.Sequential(*layers)

    @torch.no_grad()
    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, width, H/patch, W/patch) patch tokens of the last block."""
        visual = self.clip_visual
        x = visual.conv1(self._input(images))  # (B, width, gh, gw)
        batch, width, grid_h, grid_w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, width)
        pos = visual.positional_embedding.to(x.dtype)
        cls_pos, grid_pos = pos[:1], pos[1:]
        side = int(round(math.sqrt(grid_pos.shape[0])))
        grid_pos = grid_pos.reshape(1, side, side, width).permute(0, 3, 1, 2)
        if (side, side) != (grid_h, grid_w):
            grid_pos = F.interpolate(grid_pos.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False)
            grid_pos = grid_pos.to(x.dtype)
        grid_pos = grid_pos.flatten(2).transpose(1, 2)  # (1, gh*gw, width)
        cls = visual.class_embedding.to(x.dtype).expand(batch, 1, width) + cls_pos
        x = torch.cat([cls, x + grid_pos], dim=1)
        x = visual.ln_pre(x)
        transformer = visual.transformer
        if getattr(transformer, "batch_first", True):
            x = transformer(x)
        else:
            x = transformer(x.transpose(0, 1)).transpose(0, 1)
        return x[:, 1:].transpose(1, 2).reshape(batch, width, grid_h, grid_w).to(images.dtype)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        tokens = self._tokens(images)
        return [level(tokens) for level in self.neck]


class CLIPConvNeXtBackbone(_FrozenCLIPTower):
    """FC-CLIP's ConvNeXt backbone (``fcclip/modeling/backbone/clip.py`` ``extract_features_convnext``): the
    frozen open_clip timm tower's ``trunk.stem`` then its four ``trunk.stages`` (strides 4, 8, 16, 32)."""

    def __init__(self, clip_visual: nn.Module):
        super().__init__(clip_visual)
        stages = clip_visual.trunk.stages
        self.out_channels: list[int] = [_last_out_channels(stage) for stage in stages]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        trunk = self.clip_visual.trunk
        x = trunk.stem(self._input(images))
        features = []
        for stage in trunk.stages:
            x = stage(x)
            features.append(x.to(images.dtype))
        return features
