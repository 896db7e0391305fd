"""Stage-1 image backbones: a list of four feature maps at strides 4, 8, 16 and 32.

Two kinds, picked by ``config.backbone.kind``:

* ``"timm"`` (OVSeg / Mask2Former style): any timm ``features_only`` model whose feature pyramid
  reaches strides 4-32 (ResNets, ConvNeXts, Swins). Trained with the rest of stage 1 unless ``freeze``.
* ``"clip"`` (FC-CLIP style): the frozen image tower of the CLIP used in stage 2. Its parameters belong
  to :class:`pmp.clip.CLIPModel` (the Segmenter saves them under ``clip.*``), so the backbone holds it
  in a plain attribute: it is not a registered submodule, it is absent from ``state_dict()``, it is not
  moved by ``.to()`` and it runs under ``torch.no_grad``.

Every backbone exposes ``out_channels`` (one int per stride 4, 8, 16, 32) and maps a normalised
(B, 3, H, W) batch to ``[f4, f8, f16, f32]`` with f_s of shape (B, out_channels[i], H/s, W/s).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pmp.config import SegmenterConfig
from pmp.modeling.layers import group_norm

STRIDES: tuple[int, ...] = (4, 8, 16, 32)
_HUB_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")


def build_backbone(
    config: SegmenterConfig, clip_visual: nn.Module | None = None, load_weights: bool = True
) -> nn.Module:
    """The backbone named by ``config.backbone``; ``load_weights=False`` skips ``pretrained_file``.

    Skipping is for rebuilding a saved model whose checkpoint already holds the backbone weights.
    """
    cfg = config.backbone
    if cfg.kind == "timm":
        pretrained = cfg.pretrained_file if load_weights else None
        return TimmBackbone(
            cfg.name,
            image_size=config.image_size,
            pretrained_file=pretrained,
            freeze=cfg.freeze,
            drop_path_rate=cfg.drop_path_rate,
            frozen_batch_norm=cfg.frozen_batch_norm,
        )
    if cfg.kind == "clip":
        if clip_visual is None:
            raise ValueError(
                'backbone.kind="clip" needs the CLIP image tower: pass clip_visual=<open_clip model>.visual'
            )
        if hasattr(clip_visual, "layer4") and hasattr(clip_visual, "layer1"):
            return CLIPResNetBackbone(clip_visual)
        if hasattr(clip_visual, "conv1") and hasattr(clip_visual, "transformer"):
            return CLIPViTBackbone(clip_visual)
        raise ValueError(
            f"unsupported CLIP image tower {type(clip_visual).__name__}; "
            "accepted: open_clip ModifiedResNet or VisionTransformer"
        )
    raise ValueError(f"config field backbone.kind={cfg.kind!r} is not supported; accepted: timm, clip")


def resolve_weights_file(source: str) -> Path:
    """A local weights file, or the cached copy of a Hugging Face Hub repo id. Never downloads."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not path.exists():
        from huggingface_hub import hf_hub_download

        for filename in _HUB_WEIGHT_FILES:
            try:
                return Path(hf_hub_download(source, filename, local_files_only=True))
            except Exception:  # noqa: BLE001 - any miss (not cached, offline, no such file) means "try the next name"
                continue
        raise FileNotFoundError(
            f"backbone weights {source!r} are not in the Hugging Face cache "
            f"(looked for {', '.join(_HUB_WEIGHT_FILES)}); this project never downloads at run time: "
            f"fetch them first (e.g. `hf download {source}`) or give a local file"
        )
    raise FileNotFoundError(
        f"backbone weights {source!r} not found; accepted: a local .safetensors/.pth file or a Hub repo id "
        "(owner/name) already in the Hugging Face cache"
    )


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model restricted to the outputs at strides 4, 8, 16, 32.

    The outputs are picked from timm's ``feature_info`` reductions, so ResNets (whose first feature is
    the stride-2 stem) and Swins/ConvNeXts (already 4-32) are handled alike. Swin is built with
    ``img_size=image_size`` and ``strict_img_size=False``: its window attention masks are then rebuilt
    for each input size, so it runs at 640 px as well as at 64 px test images, and at non-square sizes.
    timm returns Swin features channels-last; they are permuted to (B, C, H, W) here.
    """

    def __init__(
        self,
        name: str,
        image_size: int = 640,
        pretrained_file: str | None = None,
        freeze: bool = False,
        drop_path_rate: float = 0.0,
        frozen_batch_norm: bool = False,
    ):
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise ValueError(
                f"timm has no model named {name!r}; try e.g. resnet50, convnext_tiny, swin_base_patch4_window7_224"
            )
        weights = str(resolve_weights_file(pretrained_file)) if pretrained_file is not None else None
        size_kwargs = {"img_size": image_size, "strict_img_size": False} if name.startswith("swin") else {}
        probe = timm.create_model(name, features_only=True, pretrained=False, **size_kwargs)
        reductions = probe.feature_info.reduction()
        out_indices = []
        for stride in STRIDES:
            matches = [index for index, reduction in enumerate(reductions) if reduction == stride]
            if not matches:
                raise ValueError(
                    f"timm model {name!r} has feature strides {reductions}; stage 1 needs strides {list(STRIDES)}"
                )
            out_indices.append(matches[-1])  # the deepest feature at that stride
        load_kwargs: dict = {"pretrained": False}
        if drop_path_rate:  # stochastic depth; timm turns it off in eval mode
            size_kwargs["drop_path_rate"] = drop_path_rate
        if weights is not None:  # timm's own loader (head dropped, checkpoint filters applied), from a file only
            load_kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": weights}}
        if out_indices == list(range(len(reductions))) and weights is None and not drop_path_rate:
            self.body = probe
        else:
            try:
                self.body = timm.create_model(
                    name, features_only=True, out_indices=tuple(out_indices), **size_kwargs, **load_kwargs
                )
            except RuntimeError as error:  # timm's strict load_state_dict: wrong file for this architecture
                raise ValueError(f"weights {pretrained_file!r} do not fit timm model {name!r}: {error}") from error
        if frozen_batch_norm:  # after the weights are loaded: the frozen layers copy their statistics
            from timm.layers import freeze_batch_norm_2d

            self.body = freeze_batch_norm_2d(self.body)
        self.channels_last = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        self.out_channels: list[int] = list(self.body.feature_info.channels())
        self.frozen = freeze
        if freeze:
            self.body.requires_grad_(False)
            self.body.eval()

    def train(self, mode: bool = True) -> "TimmBackbone":
        """A frozen backbone stays in eval mode so that its BatchNorm statistics stay frozen too."""
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(images)
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]  # (B,H,W,C) -> (B,C,H,W)
        return list(features)


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
