"""Stage-1 image backbones: a list of four feature maps at strides 4, 8, 16 and 32.

Three kinds, picked by ``config.backbone.kind``:

* ``"timm"`` (Mask2Former style): any timm ``features_only`` model whose feature pyramid reaches
  strides 4-32 (ResNets, ConvNeXts, Swins). Trained with the rest of stage 1 unless ``freeze``.
* ``"swin"`` (OVSeg's and Mask2Former's own Swin, :mod:`pmp.modeling.swin`).
* ``"clip"`` (FC-CLIP style): the frozen image tower of the CLIP used in stage 2
  (:mod:`pmp.modeling.clip_backbone`).

Every backbone exposes ``out_channels`` (one int per stride 4, 8, 16, 32) and maps a normalised
(B, 3, H, W) batch to ``[f4, f8, f16, f32]`` with f_s of shape (B, out_channels[i], H/s, W/s).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from pmp.config import BackboneConfig, SegmenterConfig
from pmp.modeling.clip_backbone import STRIDES, CLIPConvNeXtBackbone, CLIPResNetBackbone, CLIPViTBackbone
from pmp.modeling.swin import SwinTransformer, swin_state_dict

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
            model_kwargs=cfg.model_kwargs,
            res5_multi_grid=cfg.res5_multi_grid,
        )
    if cfg.kind == "swin":
        return build_swin(cfg, config.backbone.pretrained_file if load_weights else None)
    if cfg.kind == "clip":
        if clip_visual is None:
            raise ValueError(
                'backbone.kind="clip" needs the CLIP image tower: pass clip_visual=<open_clip model>.visual'
            )
        if hasattr(clip_visual, "layer4") and hasattr(clip_visual, "layer1"):
            return CLIPResNetBackbone(clip_visual)
        if hasattr(clip_visual, "conv1") and hasattr(clip_visual, "transformer"):
            return CLIPViTBackbone(clip_visual)
        if hasattr(getattr(clip_visual, "trunk", None), "stages") and len(clip_visual.trunk.stages) == 4:
            return CLIPConvNeXtBackbone(clip_visual)
        raise ValueError(
            f"unsupported CLIP image tower {type(clip_visual).__name__}; "
            "accepted: open_clip ModifiedResNet, VisionTransformer or a timm ConvNeXt tower"
        )
    raise ValueError(f"config field backbone.kind={cfg.kind!r} is not supported; accepted: timm, swin, clip")


def build_swin(cfg: BackboneConfig, pretrained_file: str | None) -> SwinTransformer:
    """OVSeg's Swin (:mod:`pmp.modeling.swin`) sized by ``cfg.model_kwargs``, its weights from
    ``pretrained_file`` in any published layout (:func:`pmp.modeling.swin.swin_state_dict`): only the
    per-stage output norms may be missing, as they are from a classification checkpoint."""
    kwargs = dict(cfg.model_kwargs or {})
    try:
        swin = SwinTransformer(drop_path_rate=cfg.drop_path_rate, **kwargs)
    except TypeError as error:
        raise ValueError(f"backbone.model_kwargs {kwargs} do not fit pmp.modeling.swin's Swin: {error}") from None
    if pretrained_file is not None:
        state = swin_state_dict(read_state_dict(resolve_weights_file(pretrained_file)))
        try:
            result = swin.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise ValueError(f"weights {pretrained_file!r} do not fit this Swin ({kwargs}): {error}") from None
        missing = [key for key in result.missing_keys if not re.fullmatch(r"norm\d\.(weight|bias)", key)]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"weights {pretrained_file!r} are not a Swin of this size: missing {missing[:6]}, unexpected "
                f"{result.unexpected_keys[:6]}"
            )
    if cfg.freeze:
        swin.requires_grad_(False)
    return swin


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file read with ``weights_only=True`` (a ``model`` or
    ``state_dict`` wrapper unwrapped)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors")
    return state


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
        model_kwargs: dict | None = None,
        res5_multi_grid: list[int] | None = None,
    ):
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise ValueError(
                f"timm has no model named {name!r}; try e.g. resnet50, convnext_tiny, swin_base_patch4_window7_224"
            )
        weights = str(resolve_weights_file(pretrained_file)) if pretrained_file is not None else None
        size_kwargs = {"img_size": image_size, "strict_img_size": False} if name.startswith("swin") else {}
        size_kwargs.update(model_kwargs or {})
        try:
            probe = timm.create_model(name, features_only=True, pretrained=False, **size_kwargs)
        except TypeError as error:
            raise ValueError(f"backbone.model_kwargs {model_kwargs} do not fit timm model {name!r}: {error}") from None
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
        if res5_multi_grid:
            dilate_last_stage(self.body, res5_multi_grid)
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


def dilate_last_stage(body: nn.Module, rates: list[int]) -> None:
    """DeepLab's multi-grid (detectron2 ``build_resnet_deeplab_backbone`` with RES5_DILATION 1): block i of
    the last ResNet stage gets its 3x3 conv dilated by ``rates[i]`` (padding alike, so sizes are kept); the
    first block keeps its stride 2."""
    blocks = list(getattr(body, "layer4", []))
    if not blocks or not all(hasattr(block, "conv2") for block in blocks) or len(rates) != len(blocks):
        raise ValueError(
            f"backbone.res5_multi_grid {rates} needs a ResNet whose last stage has {len(rates)} bottleneck blocks "
            f"(this one has {len(blocks)})"
        )
    for block, rate in zip(blocks, rates):
        block.conv2.dilation, block.conv2.padding = (rate, rate), (rate, rate)
