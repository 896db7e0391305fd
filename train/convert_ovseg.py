"""OVSeg's released checkpoints as our checkpoint folders: ``python -m train.convert_ovseg SRC.pth OUT_DIR``.

OVSeg's README releases two models trained on COCO-Stuff with its mask-adapted CLIP and mask prompt tuning:
``ovseg_swinbase_vitL14_ft_mpt.pth`` (Swin-B + CLIP ViT-L/14, the paper's host) and
``ovseg_R101c_vitB16_ft_mpt.pth`` (R101c + ViT-B/16). Each becomes one segmenter folder: OVSeg's MaskFormer
stage 1 as a baseline (``text_mode`` "none") and its adapted CLIP, mask prompts included, as its stage 2,
configured as the matching recipe (``recipes/ovseg-*.json``) with every size read from the weights. Then
``python app.py --baseline OUT_DIR`` shows OVSeg's own model, and ``train_segmenter --init-from OUT_DIR``
starts PMP from it (with a recipe of the same backbone).

Every source key is mapped or listed in :data:`UNUSED` with the reason; any other key stops the conversion.
The key names and shapes are those of OVSeg's model code: ``open_vocab_seg/modeling/backbone/swin.py``,
detectron2's ``ResNet`` with ``DeepLabStem`` (``build_resnet_deeplab_backbone``),
``modeling/heads/pixel_decoder.py`` (``BasePixelDecoder``), ``modeling/transformer/transformer.py`` and
``open_vocab_transformer_predictor.py``, ``modeling/clip_adapter/adapter.py`` and ``third_party/CLIP``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pickle
import re
import sys
from pathlib import Path

import torch

from pmp.config import BackboneConfig, CLIPConfig, SegmenterConfig
from pmp.modeling.swin import relative_position_index
from pmp.segmenter import Segmenter
from train.class_names import COCO_STUFF_171_NAMES
from train.recipes import get_recipe

# OVSeg's fixed temperature for both stages (clip_adapter/adapter.py get_sim_logits: temperature=100).
OVSEG_TEMPERATURE = 100.0
# detectron2's DeepLab ResNet in OVSeg's configs/ovseg_R101c_vitB_bs32_120k.yaml: MODEL.RESNETS.RES5_MULTI_GRID.
R101C_MULTI_GRID = [1, 2, 4]
UNUSED: dict[str, str] = {
    r"criterion\.empty_weight": "the training loss's class weights (no-object 0.1), not a model weight",
    r"clip_adapter\.pixel_(mean|std)": "CLIP's image normalisation, which the CLIP config carries",
    r"pixel_(mean|std)": "stage 1's image normalisation (ImageNet's), which the segmenter config carries",
    r"backbone\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index": "recomputed by the Swin (checked equal)",
    r"clip_adapter\.clip_model\.logit_scale": (
        "OVSeg classifies crops with a fixed temperature of 100 (get_sim_logits), not with CLIP's logit scale: "
        "the converted CLIP's logit_scale is set to log(100)"
    ),
}
SOURCES = {"swin": "ovseg-swinb-vitl14-baseline", "resnet": "ovseg-r101c-vitb16-baseline"}


class ConversionError(ValueError):
    """The file is not an OVSeg checkpoint this converter knows, said in one line."""


def read_ovseg_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict of a detectron2 checkpoint (``{"model": ...}``), read with ``weights_only=True``."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConversionError(f"{path}: not a readable torch checkpoint of tensors ({first_line})") from None
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(
            f"{path}: holds no model state dict of tensors (a detectron2 checkpoint has one under 'model')"
        )
    return state


def convert(state: dict[str, torch.Tensor]) -> tuple[SegmenterConfig, dict[str, torch.Tensor], dict[str, str]]:
    """OVSeg state dict -> (our config, our state dict, {unused source key: why})."""
    taken: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise ConversionError(f"not an OVSeg checkpoint: it has no {key!r}")
        taken.add(key)
        return state[key]

    kind = "swin" if "backbone.patch_embed.proj.weight" in state else "resnet"
    if kind == "resnet" and "backbone.stem.conv1.weight" not in state:
        raise ConversionError("not an OVSeg checkpoint: its backbone is neither OVSeg's Swin nor its R101c")
    ours: dict[str, torch.Tensor] = {}
    backbone, backbone_weights = (swin_backbone if kind == "swin" else resnet_backbone)(state, take)
    ours.update({f"proposal_model.backbone.{k}": v for k, v in backbone_weights.items()})
    pixel_sizes = pixel_decoder(take, ours)
    decoder_sizes = predictor(state, take, ours)
    recipe = get_recipe(SOURCES[kind]).model
    clip = clip_weights(state, take, ours, recipe.clip)
    config = dataclasses.replace(
        recipe,
        backbone=backbone,
        clip=clip,
        pixel_decoder=dataclasses.replace(recipe.pixel_decoder, **pixel_sizes),
        decoder=dataclasses.replace(recipe.decoder, **decoder_sizes),
        training_names=COCO_STUFF_171_NAMES,
    )
    unused = {}
    for key in sorted(set(state) - taken):
        reason = next((why for pattern, why in UNUSED.items() if re.fullmatch(pattern, key)), None)
        if reason is None:
            raise ConversionError(
                f"source key {key!r} is neither mapped nor known to be unused: nothing is dropped silently"
            )
        unused[key] = reason
    check_unused_values(state, unused)
    return config, ours, unused


def swin_backbone(state: dict, take) -> tuple[BackboneConfig, dict[str, torch.Tensor]]:
    """OVSeg's D2SwinTransformer keys are pmp.modeling.swin's, one for one; sizes from the shapes."""
    weights = {
        k[len("backbone.") :]: take(k)
        for k in state
        if k.startswith("backbone.") and "relative_position_index" not in k
    }
    stages = sorted({int(k.split(".")[1]) for k in weights if k.startswith("layers.")})
    depths = [len({k.split(".")[3] for k in weights if k.startswith(f"layers.{s}.blocks.")}) for s in stages]
    tables = [weights[f"layers.{s}.blocks.0.attn.relative_position_bias_table"] for s in stages]
    window = (math.isqrt(tables[0].shape[0]) + 1) // 2
    kwargs = {
        "embed_dim": int(weights["patch_embed.proj.weight"].shape[0]),
        "depths": depths,
        "num_heads": [int(t.shape[1]) for t in tables],
        "window_size": window,
    }
    return BackboneConfig(kind="swin", drop_path_rate=0.3, model_kwargs=kwargs), weights


def resnet_backbone(state: dict, take) -> tuple[BackboneConfig, dict[str, torch.Tensor]]:
    """detectron2's ResNet with the DeepLab stem (OVSeg's R101c) -> timm's ``resnet101c`` with its stem widened
    to the checkpoint's (STEM_OUT_CHANNELS 128: stem_width 64), the DeepLab multi-grid in res5 and frozen
    BatchNorm (detectron2's default FrozenBN). Stride in the 3x3 conv on both sides (STRIDE_IN_1X1 False)."""
    weights = {}
    norm = {"weight": "weight", "bias": "bias", "running_mean": "running_mean", "running_var": "running_var"}
    for index, target in ((1, "conv1.0"), (2, "conv1.3"), (3, "conv1.6")):
        weights[f"{target}.weight"] = take(f"backbone.stem.conv{index}.weight")
        bn = {1: "conv1.1", 2: "conv1.4", 3: "bn1"}[index]
        for name in norm:
            weights[f"{bn}.{name}"] = take(f"backbone.stem.conv{index}.norm.{name}")
    blocks = {}
    for key in state:
        match = re.fullmatch(r"backbone\.res(\d)\.(\d+)\.(conv\d|shortcut)\.(weight|norm\.\w+)", key)
        if match is None:
            continue
        stage, block, layer, rest = match.groups()
        blocks.setdefault(int(stage), set()).add(int(block))
        target = f"layer{int(stage) - 1}.{block}."
        if layer == "shortcut":
            target += "downsample.0.weight" if rest == "weight" else f"downsample.1.{rest[len('norm.') :]}"
        else:
            target += f"{layer}.weight" if rest == "weight" else f"bn{layer[-1]}.{rest[len('norm.') :]}"
        weights[target] = take(key)
    depths = [len(blocks.get(stage, ())) for stage in (2, 3, 4, 5)]
    if depths[3] != len(R101C_MULTI_GRID):
        raise ConversionError(
            f"OVSeg's R101c has {len(R101C_MULTI_GRID)} res5 blocks (multi-grid {R101C_MULTI_GRID}), this {depths[3]}"
        )
    kwargs = {
        "stem_width": int(weights["conv1.0.weight"].shape[0]),
        "base_width": int(weights["layer1.0.conv1.weight"].shape[0]),  # RESNETS.WIDTH_PER_GROUP (64)
        "layers": depths,
    }
    weights = {f"body.{key}": value for key, value in weights.items()}  # TimmBackbone holds timm's model as .body
    config = BackboneConfig(
        kind="timm",
        name="resnet101c",
        frozen_batch_norm=True,
        model_kwargs=kwargs,
        res5_multi_grid=list(R101C_MULTI_GRID),
    )
    return config, weights


def pixel_decoder(take, ours: dict) -> dict[str, int]:
    """BasePixelDecoder: ``layer_4`` (res5, no lateral), ``adapter_k`` / ``layer_k`` for res(k+1), then
    ``mask_features``; ours lists the same convs coarse to fine, each a (conv, GroupNorm) pair."""
    prefix, target = "sem_seg_head.pixel_decoder.", "proposal_model.pixel_decoder."
    for level in (4, 3, 2, 1):
        position = 4 - level
        pairs = [("layer", "output_convs")] + ([("adapter", "lateral_convs")] if level < 4 else [])
        for theirs, mine in pairs:
            ours[f"{target}{mine}.{position}.0.weight"] = take(f"{prefix}{theirs}_{level}.weight")
            for name in ("weight", "bias"):
                ours[f"{target}{mine}.{position}.1.{name}"] = take(f"{prefix}{theirs}_{level}.norm.{name}")
    for name in ("weight", "bias"):
        ours[f"{target}mask_features.{name}"] = take(f"{prefix}mask_features.{name}")
    return {"conv_dim": int(ours[f"{target}output_convs.0.0.weight"].shape[0]),
            "mask_dim": int(ours[f"{target}mask_features.weight"].shape[0])}  # fmt: skip


def predictor(state: dict, take, ours: dict) -> dict[str, int]:
    """OpenVocabTransformerPredictor: DETR's post-norm decoder layers (norm1 after self-attention, norm2 after
    cross-attention, norm3 after the FFN), its final norm, the mask MLP and the class MLP."""
    prefix, target = "sem_seg_head.predictor.", "proposal_model.decoder."
    ours[f"{target}query_embed.weight"] = take(f"{prefix}query_embed.weight")
    for name in ("weight", "bias"):
        ours[f"{target}input_proj.{name}"] = take(f"{prefix}input_proj.{name}")
        ours[f"{target}decoder_norm.{name}"] = take(f"{prefix}transformer.decoder.norm.{name}")
    layers = sorted({int(k.split(".")[5]) for k in state if k.startswith(f"{prefix}transformer.decoder.layers.")})
    renames = {
        "self_attn.": "self_attn.self_attn.", "multihead_attn.": "cross_attn.multihead_attn.",
        "norm1.": "self_attn.norm.", "norm2.": "cross_attn.norm.", "norm3.": "ffn.norm.",
        "linear1.": "ffn.linear1.", "linear2.": "ffn.linear2.",
    }  # fmt: skip
    for layer in layers:
        source = f"{prefix}transformer.decoder.layers.{layer}."
        for key in [k for k in state if k.startswith(source)]:
            rest = key[len(source) :]
            head = next((old for old in renames if rest.startswith(old)), None)
            if head is None:
                raise ConversionError(f"unknown decoder weight {key!r}")
            ours[f"{target}layers.{layer}.{renames[head]}{rest[len(head) :]}"] = take(key)
    for mlp, mine in (
        ("mask_embed", f"{target}mask_head.mask_embed"),
        ("class_embed", "proposal_model.class_head.proj"),
    ):
        for key in [k for k in state if k.startswith(f"{prefix}{mlp}.layers.")]:
            ours[mine + key[len(f"{prefix}{mlp}") :]] = take(key)
    class_layers = len(
        {k for k in ours if k.startswith("proposal_model.class_head.proj.layers.") and k.endswith(".weight")}
    )
    hidden = ours[f"{target}query_embed.weight"].shape[1]
    return {
        "hidden_dim": int(hidden),
        "num_queries": int(ours[f"{target}query_embed.weight"].shape[0]),
        "num_layers": len(layers),
        "dim_feedforward": int(ours[f"{target}layers.0.ffn.linear1.weight"].shape[0]),
        "class_head_layers": class_layers,
        "class_head_hidden_dim": int(ours["proposal_model.class_head.proj.layers.0.weight"].shape[0]),
        "class_logit_scale": OVSEG_TEMPERATURE,
    }


def clip_weights(state: dict, take, ours: dict, base: CLIPConfig) -> CLIPConfig:
    """``clip_adapter.clip_model.*`` is OpenAI's CLIP layout, which open_clip keeps (plus OVSeg's
    ``visual.mask_embedding``); the sizes are read as open_clip's ``build_model_from_openai_state_dict``
    reads them. ``clip_adapter.non_object_embedding`` (1, C) is stage 1's no-object embedding. ``base``: the
    recipe's CLIP config (its name and OVSeg's templates), which the weights now come with."""
    prefix = "clip_adapter.clip_model."
    clip = {k[len(prefix) :]: take(k) for k in state if k.startswith(prefix) and k != f"{prefix}logit_scale"}
    if "visual.conv1.weight" not in clip or "visual.class_embedding" not in clip:
        raise ConversionError("OVSeg's released models use a ViT CLIP; this checkpoint's CLIP is not one")
    vision_width = int(clip["visual.conv1.weight"].shape[0])
    patch = int(clip["visual.conv1.weight"].shape[-1])
    grid = math.isqrt(clip["visual.positional_embedding"].shape[0] - 1)
    text_width = int(clip["ln_final.weight"].shape[0])
    model_cfg = {
        "embed_dim": int(clip["text_projection"].shape[1]),
        "vision_cfg": {
            "image_size": patch * grid,
            "layers": len({k.split(".")[3] for k in clip if k.startswith("visual.transformer.resblocks.")}),
            "width": vision_width,
            "patch_size": patch,
        },
        "text_cfg": {
            "context_length": int(clip["positional_embedding"].shape[0]),
            "vocab_size": int(clip["token_embedding.weight"].shape[0]),
            "width": text_width,
            "heads": text_width // 64,
            "layers": len({k.split(".")[2] for k in clip if k.startswith("transformer.resblocks.")}),
        },
    }
    ours.update({f"clip.open_clip.{k}": v for k, v in clip.items()})
    ours["clip.open_clip.logit_scale"] = torch.tensor(math.log(OVSEG_TEMPERATURE))
    ours["proposal_model.class_head.no_object_embed"] = take("clip_adapter.non_object_embedding").reshape(-1)
    depth = int(clip["visual.mask_embedding"].shape[0]) if "visual.mask_embedding" in clip else 0
    return dataclasses.replace(base, pretrained=None, model_cfg=model_cfg, quick_gelu=True, mask_prompt_depth=depth)


def check_unused_values(state: dict, unused: dict[str, str]) -> None:
    """What is dropped because it is recomputed must be what is recomputed."""
    for key in unused:
        if key.endswith("relative_position_index"):
            window = math.isqrt(state[key].shape[0])
            if not torch.equal(state[key].long(), relative_position_index(window)):
                raise ConversionError(f"{key} is not Swin's relative position index for window {window}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.convert_ovseg", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="an OVSeg checkpoint, e.g. ovseg_swinbase_vitL14_ft_mpt.pth")
    parser.add_argument("out_dir", type=Path, help="the segmenter folder to write (config.json, model.safetensors)")
    args = parser.parse_args(argv)
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        print(f"error: {args.out_dir} is not empty; give a new folder", file=sys.stderr)
        return 2
    try:
        config, weights, unused = convert(read_ovseg_checkpoint(args.source))
        segmenter = Segmenter(config, load_backbone_weights=False)
        segmenter.load_state_dict(weights, strict=True)
    except (ConversionError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    card = conversion_card(args.source, len(weights), unused)
    segmenter.save_pretrained(args.out_dir, model_card=card)
    print(
        f"{args.source.name}: {len(weights)} tensors mapped, {len(unused)} left out (see {args.out_dir / 'README.md'})"
    )
    return 0


def conversion_card(source: Path, mapped: int, unused: dict[str, str]) -> str:
    lines = [
        f"# OVSeg's {source.name}, converted",
        "",
        "OVSeg's released model (github.com/facebookresearch/ov-seg, CC BY-NC 4.0) as a PMP-project segmenter: "
        "its MaskFormer stage 1 as the baseline and its mask-adapted CLIP, mask prompts included, as stage 2. "
        f"Written by `python -m train.convert_ovseg`: {mapped} tensors mapped; left out:",
        "",
    ]
    lines += [f"- `{key}`: {why}" for key, why in unused.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
