"""OVSeg written out independently of this project's modules, for the converter's tests: a state dict with
the key names and shapes of OVSeg's model code at a reduced width, and OVSeg's stage-1 forward computed
from that state dict with torch.nn.functional alone.

Sources: the backbones (``open_vocab_seg/modeling/backbone/swin.py``; detectron2's ``ResNet`` with
``DeepLabStem``, ``build_resnet_deeplab_backbone`` with RES5_MULTI_GRID [1, 2, 4], FrozenBN), the pixel decoder
(``modeling/heads/pixel_decoder.py`` ``BasePixelDecoder``, GN), the predictor
(``modeling/transformer/transformer.py``, ``transformer_predictor.py``, ``open_vocab_transformer_predictor.py``,
``position_encoding.py`` with normalize=True), the CLIP adapter (``modeling/clip_adapter/adapter.py``:
``non_object_embedding``, ``pixel_mean``/``pixel_std``, temperature 100) and ``third_party/CLIP/clip/model.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HIDDEN, HEADS, QUERIES, LAYERS, FFN = 32, 8, 5, 2, 64
CONV_DIM, MASK_DIM, CLASS_HIDDEN = 32, 32, 48
EMBED = 24  # the CLIP joint space
RES_BLOCKS, STEM_OUT, BASE_WIDTH = (1, 1, 1, 3), 32, 16  # res5 has the multi-grid's 3 blocks
RES_OUT = (256, 512, 1024, 2048)
MULTI_GRID = (1, 2, 4)
SWIN = {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "window_size": 2}


def _shapes_resnet() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_norm(name: str, out: int, inp: int, k: int) -> None:
        shapes[f"backbone.{name}.weight"] = (out, inp, k, k)
        for part in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"backbone.{name}.norm.{part}"] = (out,)

    conv_norm("stem.conv1", STEM_OUT // 2, 3, 3)
    conv_norm("stem.conv2", STEM_OUT // 2, STEM_OUT // 2, 3)
    conv_norm("stem.conv3", STEM_OUT, STEM_OUT // 2, 3)
    channels = STEM_OUT
    for stage, (blocks, out) in enumerate(zip(RES_BLOCKS, RES_OUT)):
        width = BASE_WIDTH * 2**stage
        for block in range(blocks):
            name = f"res{stage + 2}.{block}"
            if block == 0:
                conv_norm(f"{name}.shortcut", out, channels, 1)
            conv_norm(f"{name}.conv1", width, channels, 1)
            conv_norm(f"{name}.conv2", width, width, 3)
            conv_norm(f"{name}.conv3", out, width, 1)
            channels = out
    return shapes


def _shapes_swin() -> dict[str, tuple[int, ...]]:
    embed, window = SWIN["embed_dim"], SWIN["window_size"]
    shapes = {"backbone.patch_embed.proj.weight": (embed, 3, 4, 4), "backbone.patch_embed.proj.bias": (embed,)}
    shapes.update({"backbone.patch_embed.norm.weight": (embed,), "backbone.patch_embed.norm.bias": (embed,)})
    for stage, (depth, heads) in enumerate(zip(SWIN["depths"], SWIN["num_heads"])):
        dim = embed * 2**stage
        for block in range(depth):
            p = f"backbone.layers.{stage}.blocks.{block}."
            shapes[p + "attn.relative_position_bias_table"] = ((2 * window - 1) ** 2, heads)
            shapes[p + "attn.relative_position_index"] = (window * window, window * window)
            parts = {"norm1": (dim,), "norm2": (dim,), "attn.qkv": (3 * dim, dim), "attn.proj": (dim, dim),
                     "mlp.fc1": (4 * dim, dim), "mlp.fc2": (dim, 4 * dim)}  # fmt: skip
            for name, shape in parts.items():
                shapes[p + name + ".weight"], shapes[p + name + ".bias"] = shape, shape[:1]
        if stage < 3:
            p = f"backbone.layers.{stage}.downsample."
            shapes[p + "reduction.weight"] = (2 * dim, 4 * dim)
            shapes[p + "norm.weight"] = shapes[p + "norm.bias"] = (4 * dim,)
        shapes[f"backbone.norm{stage}.weight"] = shapes[f"backbone.norm{stage}.bias"] = (dim,)
    return shapes


def _shapes_head(in_channels: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    p, shapes = "sem_seg_head.pixel_decoder.", {}
    for level, channels in enumerate(in_channels, start=1):
        if level < 4:
            shapes[f"{p}adapter_{level}.weight"] = (CONV_DIM, channels, 1, 1)
            shapes[f"{p}adapter_{level}.norm.weight"] = shapes[f"{p}adapter_{level}.norm.bias"] = (CONV_DIM,)
        shapes[f"{p}layer_{level}.weight"] = (CONV_DIM, CONV_DIM if level < 4 else channels, 3, 3)
        shapes[f"{p}layer_{level}.norm.weight"] = shapes[f"{p}layer_{level}.norm.bias"] = (CONV_DIM,)
    shapes[f"{p}mask_features.weight"], shapes[f"{p}mask_features.bias"] = (MASK_DIM, CONV_DIM, 3, 3), (MASK_DIM,)
    p = "sem_seg_head.predictor."
    shapes[p + "query_embed.weight"] = (QUERIES, HIDDEN)
    shapes[p + "input_proj.weight"], shapes[p + "input_proj.bias"] = (HIDDEN, in_channels[-1], 1, 1), (HIDDEN,)
    for layer in range(LAYERS):
        q = f"{p}transformer.decoder.layers.{layer}."
        for attn in ("self_attn", "multihead_attn"):
            shapes[f"{q}{attn}.in_proj_weight"], shapes[f"{q}{attn}.in_proj_bias"] = (3 * HIDDEN, HIDDEN), (3 * HIDDEN,)
            shapes[f"{q}{attn}.out_proj.weight"], shapes[f"{q}{attn}.out_proj.bias"] = (HIDDEN, HIDDEN), (HIDDEN,)
        shapes[q + "linear1.weight"], shapes[q + "linear1.bias"] = (FFN, HIDDEN), (FFN,)
        shapes[q + "linear2.weight"], shapes[q + "linear2.bias"] = (HIDDEN, FFN), (HIDDEN,)
        for norm in ("norm1", "norm2", "norm3"):
            shapes[f"{q}{norm}.weight"] = shapes[f"{q}{norm}.bias"] = (HIDDEN,)
    shapes[p + "transformer.decoder.norm.weight"] = shapes[p + "transformer.decoder.norm.bias"] = (HIDDEN,)
    for index, (out, inp) in enumerate(((HIDDEN, HIDDEN), (HIDDEN, HIDDEN), (MASK_DIM, HIDDEN))):
        shapes[f"{p}mask_embed.layers.{index}.weight"], shapes[f"{p}mask_embed.layers.{index}.bias"] = (
            (out, inp),
            (out,),
        )
    for index, (out, inp) in enumerate(((CLASS_HIDDEN, HIDDEN), (EMBED, CLASS_HIDDEN))):
        shapes[f"{p}class_embed.layers.{index}.weight"], shapes[f"{p}class_embed.layers.{index}.bias"] = (
            (out, inp),
            (out,),
        )
    return shapes


def _shapes_clip(width: int = 64, layers: int = 3, patch: int = 16, grid: int = 4, depth: int = 3) -> dict:
    p, shapes = "clip_adapter.clip_model.", {}
    text_width, context, vocab = 64, 16, 49408
    shapes.update({p + "visual.class_embedding": (width,), p + "visual.positional_embedding": (grid * grid + 1, width),
                   p + "visual.proj": (width, EMBED), p + "visual.conv1.weight": (width, 3, patch, patch),
                   p + "visual.mask_embedding": (depth, grid * grid, width)})  # fmt: skip
    for ln in ("visual.ln_pre", "visual.ln_post", "ln_final"):
        shapes[f"{p}{ln}.weight"] = shapes[f"{p}{ln}.bias"] = (text_width if ln == "ln_final" else width,)
    for tower, dim, count in (("visual.transformer", width, layers), ("transformer", text_width, 1)):
        for block in range(count):
            q = f"{p}{tower}.resblocks.{block}."
            shapes[q + "attn.in_proj_weight"], shapes[q + "attn.in_proj_bias"] = (3 * dim, dim), (3 * dim,)
            shapes[q + "attn.out_proj.weight"], shapes[q + "attn.out_proj.bias"] = (dim, dim), (dim,)
            shapes[q + "mlp.c_fc.weight"], shapes[q + "mlp.c_fc.bias"] = (4 * dim, dim), (4 * dim,)
            shapes[q + "mlp.c_proj.weight"], shapes[q + "mlp.c_proj.bias"] = (dim, 4 * dim), (dim,)
            for ln in ("ln_1", "ln_2"):
                shapes[f"{q}{ln}.weight"] = shapes[f"{q}{ln}.bias"] = (dim,)
    shapes.update({p + "positional_embedding": (context, text_width), p + "text_projection": (text_width, EMBED),
                   p + "logit_scale": (), p + "token_embedding.weight": (vocab, text_width)})  # fmt: skip
    shapes["clip_adapter.non_object_embedding"] = (1, EMBED)
    shapes["clip_adapter.pixel_mean"] = shapes["clip_adapter.pixel_std"] = (1, 3, 1, 1)
    shapes["criterion.empty_weight"] = (172,)
    return shapes


def ovseg_state_dict(backbone: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under OVSeg's key names and shapes (``backbone``: "resnet" or "swin")."""
    generator = torch.Generator().manual_seed(seed)
    shapes = _shapes_resnet() if backbone == "resnet" else _shapes_swin()
    channels = RES_OUT if backbone == "resnet" else tuple(SWIN["embed_dim"] * 2**i for i in range(4))
    shapes.update(_shapes_head(channels))
    shapes.update(_shapes_clip())
    state = {}
    for key, shape in shapes.items():
        if key.endswith("relative_position_index"):
            from pmp.modeling.swin import relative_position_index  # its values are fixed by the window

            state[key] = relative_position_index(SWIN["window_size"])
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        elif key.endswith(("weight", "norm.weight")) and "embed" not in key:
            state[key] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=generator)
    state["clip_adapter.clip_model.logit_scale"] = torch.tensor(4.0)
    return state


# ------------------------------------------------------------------------------------ OVSeg's forward
def _conv_norm(x, sd, name, stride=1, padding=0, dilation=1, relu=True):
    x = F.conv2d(x, sd[f"{name}.weight"], None, stride, padding, dilation)
    n = f"{name}.norm."
    x = F.batch_norm(
        x, sd[n + "running_mean"], sd[n + "running_var"], sd[n + "weight"], sd[n + "bias"], False, 0.0, 1e-5
    )
    return F.relu(x) if relu else x


def deeplab_resnet(images: torch.Tensor, sd: dict) -> list[torch.Tensor]:
    """detectron2's DeepLab ResNet: the three-conv stem, a 3x3 max pool, bottlenecks with the stride in the
    3x3 conv, res5's 3x3 convs dilated by the multi-grid (its first block keeping stride 2)."""
    x = _conv_norm(images, sd, "backbone.stem.conv1", 2, 1)
    x = _conv_norm(x, sd, "backbone.stem.conv2", 1, 1)
    x = F.max_pool2d(_conv_norm(x, sd, "backbone.stem.conv3", 1, 1), 3, 2, 1)
    features = []
    for stage, blocks in enumerate(RES_BLOCKS, start=2):
        for block in range(blocks):
            p = f"backbone.res{stage}.{block}"
            stride = 2 if block == 0 and stage > 2 else 1
            rate = MULTI_GRID[block] if stage == 5 else 1
            shortcut = _conv_norm(x, sd, f"{p}.shortcut", stride, relu=False) if f"{p}.shortcut.weight" in sd else x
            y = _conv_norm(_conv_norm(x, sd, f"{p}.conv1"), sd, f"{p}.conv2", stride, rate, rate)
            x = F.relu(_conv_norm(y, sd, f"{p}.conv3", relu=False) + shortcut)
        features.append(x)
    return features


def _sine(feature: torch.Tensor, num_feats: int) -> torch.Tensor:
    """DETR's PositionEmbeddingSine(num_feats, normalize=True) for an unpadded map -> (B, 2 num_feats, H, W)."""
    batch, _, height, width = feature.shape
    ones = torch.ones(batch, height, width)
    y, x = ones.cumsum(1), ones.cumsum(2)
    y, x = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi, x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(num_feats) // 2) / num_feats)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


def _mha(q, k, v, sd, name):
    return F.multi_head_attention_forward(
        q, k, v, HIDDEN, HEADS, sd[f"{name}.in_proj_weight"], sd[f"{name}.in_proj_bias"], None, None, False, 0.0,
        sd[f"{name}.out_proj.weight"], sd[f"{name}.out_proj.bias"], training=False, need_weights=False,
    )[0]  # fmt: skip


def _ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"])


def _mlp(x, sd, name, layers):
    for index in range(layers):
        x = F.linear(x, sd[f"{name}.layers.{index}.weight"], sd[f"{name}.layers.{index}.bias"])
        x = F.relu(x) if index < layers - 1 else x
    return x


def ovseg_stage1(features: list[torch.Tensor], sd: dict, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OVSeg's head on backbone features [res2..res5] with (K, E) text embeddings -> (B, Q, K+1) logits at
    temperature 100 against [normalised text; normalised non-object embedding], (B, Q, H/4, W/4) masks."""
    p = "sem_seg_head.pixel_decoder."

    def conv_gn(x, name, padding, relu):
        x = F.group_norm(F.conv2d(x, sd[f"{p}{name}.weight"], None, 1, padding), 32, sd[f"{p}{name}.norm.weight"],
                         sd[f"{p}{name}.norm.bias"])  # fmt: skip
        return F.relu(x) if relu else x

    y = conv_gn(features[3], "layer_4", 1, True)
    for level in (3, 2, 1):
        lateral = conv_gn(features[level - 1], f"adapter_{level}", 0, False)
        y = conv_gn(lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest"), f"layer_{level}", 1, True)
    mask_features = F.conv2d(y, sd[f"{p}mask_features.weight"], sd[f"{p}mask_features.bias"], padding=1)

    p = "sem_seg_head.predictor."
    res5 = features[3]
    src = F.conv2d(res5, sd[p + "input_proj.weight"], sd[p + "input_proj.bias"]).flatten(2).permute(2, 0, 1)
    pos = _sine(res5, HIDDEN // 2).flatten(2).permute(2, 0, 1)  # (HW, B, C)
    query_pos = sd[p + "query_embed.weight"][:, None].repeat(1, res5.shape[0], 1)  # (Q, B, C)
    tgt = torch.zeros_like(query_pos)
    for layer in range(LAYERS):
        q = f"{p}transformer.decoder.layers.{layer}."
        tgt = _ln(tgt + _mha(tgt + query_pos, tgt + query_pos, tgt, sd, q + "self_attn"), sd, q + "norm1")
        tgt = _ln(tgt + _mha(tgt + query_pos, src + pos, src, sd, q + "multihead_attn"), sd, q + "norm2")
        inner = F.relu(F.linear(tgt, sd[q + "linear1.weight"], sd[q + "linear1.bias"]))
        ffn = F.linear(inner, sd[q + "linear2.weight"], sd[q + "linear2.bias"])
        tgt = _ln(tgt + ffn, sd, q + "norm3")
    hs = _ln(tgt, sd, p + "transformer.decoder.norm").transpose(0, 1)  # (B, Q, C)
    embeds = F.normalize(_mlp(hs, sd, p + "class_embed", 2), dim=-1)
    non_object = F.normalize(sd["clip_adapter.non_object_embedding"], dim=-1)
    classes = torch.cat([F.normalize(text, dim=-1), non_object])
    logits = 100.0 * embeds @ classes.T
    masks = torch.einsum("bqc,bchw->bqhw", _mlp(hs, sd, p + "mask_embed", 3), mask_features)
    return logits, masks
