"""Training recipes: the paper-scale ones are files, ``recipes/<host>.json``; the world's are functions here.

A paper-scale recipe is named ``<host>-<variant>``: the host's file (OVSeg's two, ``ovseg-swinb-vitl14`` and
``ovseg-r101c-vitb16``; Mask2Former-style stage 1 with a pooled stage 2, ``m2f-r50-vitb16`` and
``m2f-swinb-vitl14``) and a variant (``baseline``, ``pmp``, ``pmp_residual``) that sets only the decoder's text
mode. Each file gives every value it sets with the reference it comes from (``sources``: file and key of
OVSeg's or Mask2Former's config, "the paper", or "our choice" with the reason); docs/training.md shows them
as a table generated from the files. ``python -m train.train_segmenter --recipe NAME --print-config``
prints a recipe resolved, every field as a run would use it.

The world's recipes (the bundled models, their ablations and pilots) stay functions: they are this
project's record of how the bundled checkpoints were made, with many variants of one design.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from pmp.config import (
    CLIP_MEAN,
    CLIP_STD,
    TEXT_MODES,
    BackboneConfig,
    CLIPConfig,
    DecoderConfig,
    PixelDecoderConfig,
    SegmenterConfig,
    tiny_clip_model_cfg,
)
from train.configs import SegTrainConfig
from train.world.vocabulary import SEEN_NAMES

WORLD_TEMPLATES = ("a photo of a {}.", "a {} in the scene.", "there is a {}.")


WORLD_BACKBONE = "regnetx_002"  # timm RegNetX-200MF, trained from scratch (see world_recipe)
WORLD_STEPS = 10_000
WORLD_WIDTH = 128  # stage 1's head width: the stage-1 pilots' winner, then three seeds at the full schedule
PREVIOUS_WIDTH = 64  # the head the bundled pair had before; the query sweep and the ablations ran with it


def world_name(text_mode: str) -> str:
    """The bundled recipe's name for a text mode: ``world-baseline`` for ``none``, else ``world-<mode>``."""
    return f"world-{'baseline' if text_mode == 'none' else text_mode}"


def world_model(
    text_mode: str,
    num_queries: int = 24,
    width: int = WORLD_WIDTH,
    backbone: str = WORLD_BACKBONE,
    pixel_decoder: str = "fpn",
) -> SegmenterConfig:
    """The bundled segmenter: OVSeg's design at toy scale, 128 px.

    ``width`` is stage 1's head width (the FPN's and the mask embeddings' channels, the decoder's hidden
    size; feed-forward 4x, one attention head per 16 channels), ``backbone`` its timm CNN and
    ``pixel_decoder`` :func:`world_pixel_decoder`'s kind. The bundled
    pair has 128 channels, chosen over the previous 64 (``PREVIOUS_WIDTH``) by the capacity pilots
    (``STAGE1_PILOTS``) and then three seeds of both at the full schedule (docs/results.md): the wider head
    proposes better masks (recall +2 to +5 on every benchmark) at 1.6x stage 1's parameters.

    Stage 1 has its own trainable CNN (timm's RegNetX-200MF, from scratch: nothing may be downloaded
    here) feeding MaskFormer's FPN and a 6-layer Mask2Former decoder; the frozen tiny CLIP encodes the
    prompts and classifies the proposals (stage 2) as OVSeg's does: a masked crop of every proposal,
    read by the mask-adapted image tower (:mod:`train.adapt_clip`). On the same proposals this beats
    mask pooling of the unadapted tower's 4 x 4 dense grid (the ceilings table of docs/results.md). Each proposal
    is also read in its box with the image kept, and the two views' probabilities are multiplied: half
    the proposals fit their region with IoU under 0.7, and their masked crops alone are misread.
    """
    return SegmenterConfig(
        clip=CLIPConfig(model_name="tiny-clip", model_cfg=tiny_clip_model_cfg(), templates=WORLD_TEMPLATES),
        backbone=BackboneConfig(kind="timm", name=backbone),
        pixel_decoder=world_pixel_decoder(pixel_decoder, width),
        decoder=DecoderConfig(
            kind="mask2former",
            hidden_dim=width,
            num_queries=num_queries,
            num_layers=6,
            num_heads=width // 16,
            dim_feedforward=4 * width,
            text_mode=text_mode,
        ),
        image_size=128,
        pixel_mean=CLIP_MEAN,
        pixel_std=CLIP_STD,
        stage2_mode="crop",
        crop_top_k=num_queries,  # every proposal: the lower-ranked ones still draw pixels of the map
        crop_views=("masked", "box"),  # OVSeg's crop and its box with the image kept (docs/results.md: imperfect masks)
        max_prompts=50,
        name=world_name(text_mode),
        training_names=SEEN_NAMES,  # what the world's prompt sampler labels (train.batches.TrainingData)
    )


def world_pixel_decoder(kind: str, width: int) -> PixelDecoderConfig:
    """MaskFormer's FPN (OVSeg's, the bundled pair's) or Mask2Former's deformable encoder scaled to ``width``:
    Mask2Former's six layers and 4x feed-forward, and one head per 16 channels (8 at the bundled 128, as
    Mask2Former's 8 at 256)."""
    if kind == "fpn":
        return PixelDecoderConfig(kind="fpn", conv_dim=width, mask_dim=width)
    return PixelDecoderConfig(
        kind=kind, conv_dim=width, mask_dim=width, num_heads=width // 16, dim_feedforward=4 * width
    )


def world_recipe(
    text_mode: str, num_queries: int = 24, steps: int = WORLD_STEPS, **stage1: int | str
) -> SegTrainConfig:
    """Mask2Former's recipe scaled to one CPU core for about 100 minutes (0.55-0.6 s per step).

    Departures, all because the model is tiny and trained from scratch: lr 3e-4 instead of 1e-4, the
    backbone at the full lr (Mask2Former's x0.1 is for an ImageNet-initialised backbone), and gradient
    clipping at norm 1.0 instead of 0.01. The schedule comes from the learning curve in docs/results.md
    (world-full seen mIoU still rising at the end of the shorter runs).
    """
    return SegTrainConfig(
        model=world_model(text_mode, num_queries, **stage1),
        data="world",
        crop_size=128,
        batch_size=8,
        steps=steps,
        lr=3e-4,
        backbone_lr_multiplier=1.0,
        warmup_steps=100,
        clip_grad_norm=1.0,
        checkpoint_every=500,
        eval_every=2000,
        eval_limit=100,
        init_clip="checkpoints/tiny-clip",
        from_scratch=True,  # nothing may be downloaded where the world is trained
    )


# ------------------------------------------------------------------------ paper scale: recipes/*.json
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def recipe_files(folder: Path = RECIPES_DIR) -> dict[str, Path]:
    """Host name -> its recipe file (``recipes/<host>.json``)."""
    return {path.stem: path for path in sorted(folder.glob("*.json"))}


def read_recipe_file(path: Path) -> dict[str, Any]:
    """A recipe file: ``description``, ``variants`` (suffix -> decoder.text_mode), ``config`` (the values that
    differ from SegTrainConfig's defaults, nested as ``train_config.json``) and ``sources`` (dotted key ->
    the reference each value comes from)."""
    recipe = json.loads(path.read_text())
    missing = {"description", "variants", "config", "sources"} - set(recipe)
    if missing:
        raise ValueError(f"{path}: a recipe file needs {sorted(missing)}")
    return recipe


def flat_values(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"image_size": 640}} -> {"model.image_size": 640}: the keys ``sources`` names."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key in ("model", "clip", "backbone", "pixel_decoder", "decoder"):
            flat.update(flat_values(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def file_recipe(path: Path, variant: str) -> SegTrainConfig:
    """The training config of ``<host>-<variant>``: the file's values over the defaults, the variant's text mode."""
    recipe = read_recipe_file(path)
    if variant not in recipe["variants"]:
        raise ValueError(f"{path.stem} has no variant {variant!r}; accepted: {', '.join(recipe['variants'])}")
    config = json.loads(json.dumps(recipe["config"]))  # a deep copy
    config["model"].setdefault("decoder", {})["text_mode"] = recipe["variants"][variant]
    config["model"]["name"] = f"{path.stem}-{variant}"
    return SegTrainConfig.from_dict(config)


def recipe_table(host: str, folder: Path = RECIPES_DIR) -> str:
    """docs/training.md's table of a recipe file: every value it sets and where it comes from (Markdown)."""
    recipe = read_recipe_file(recipe_files(folder)[host])
    lines = [f"**`{host}`**: {recipe['description']}", "", "| field | value | source |", "|---|---|---|"]
    for key, value in flat_values(recipe["config"]).items():
        shown = f"{len(value)} templates" if key == "model.clip.templates" else json.dumps(value)
        lines.append(f"| `{key}` | `{shown}` | {recipe['sources'].get(key, '**no source**')} |")
    variants = ", ".join(f"`-{name}`: `{mode}`" for name, mode in recipe["variants"].items())
    lines += ["", f"Variants (`model.decoder.text_mode`): {variants}. {recipe['variant_source']}."]
    return "\n".join(lines)


def file_recipe_names(folder: Path = RECIPES_DIR) -> list[str]:
    return [
        f"{host}-{variant}"
        for host, path in recipe_files(folder).items()
        for variant in read_recipe_file(path)["variants"]
    ]


def previous_recipe(text_mode: str) -> str:
    """The recipe of a text mode with the previous bundled pair's 64-channel head: what the query sweep, the
    Fig. 5 ablations and the stage-1 pilots' control were trained with, kept so that they reproduce."""
    return f"{world_name(text_mode)}-width{PREVIOUS_WIDTH}"


# Stage-1 capacity pilots against the 64-channel recipe (baseline, the bundled schedule): is the mask gap a
# matter of stage 1's size? The other pilot, the 128-channel head, won and is today's world-baseline.
STAGE1_PILOTS = {"world-baseline-regnetx004": {"width": PREVIOUS_WIDTH, "backbone": "regnetx_004"}}
# Mask2Former's deformable pixel decoder in place of OVSeg's FPN, the rest the bundled baseline's.
PIXEL_DECODER_PILOTS = {"world-baseline-msdeform": {"pixel_decoder": "msdeform"}}

RECIPES: dict[str, Callable[[], SegTrainConfig]] = {
    **{world_name(m): (lambda m=m: world_recipe(m)) for m in TEXT_MODES},
    **{previous_recipe(m): (lambda m=m: world_recipe(m, width=PREVIOUS_WIDTH)) for m in TEXT_MODES},
    **{
        name: (lambda s=changes: world_recipe("none", **s))
        for name, changes in {**STAGE1_PILOTS, **PIXEL_DECODER_PILOTS}.items()
    },
}


def recipe_names() -> list[str]:
    """Every recipe :func:`get_recipe` knows: the world's (in code) and the paper-scale files'."""
    return [*RECIPES, *file_recipe_names()]


def get_recipe(name: str) -> SegTrainConfig:
    """A recipe by name: a world recipe, or ``<host>-<variant>`` of ``recipes/<host>.json``."""
    if name in RECIPES:
        config = RECIPES[name]()
        config.model.validate()
        return dataclasses.replace(config)
    host, _, variant = name.rpartition("-")
    files = recipe_files()
    if host not in files:
        raise ValueError(f"unknown recipe {name!r}; accepted: {', '.join(recipe_names())}")
    return file_recipe(files[host], variant)


DOCS_PAGE = RECIPES_DIR.parent / "docs" / "training.md"
TABLES_START = "<!-- recipe tables: python -m train.recipes --write-docs -->"
TABLES_END = "<!-- end of recipe tables -->"


def recipe_tables() -> str:
    """Every recipe file's table (:func:`recipe_table`), as docs/training.md holds them."""
    return "\n\n".join(recipe_table(host) for host in recipe_files())


def write_docs_tables(page: Path = DOCS_PAGE) -> None:
    """Rewrite the tables between docs/training.md's markers from the recipe files."""
    text = page.read_text()
    head, _, rest = text.partition(TABLES_START)
    _, _, tail = rest.partition(TABLES_END)
    page.write_text(f"{head}{TABLES_START}\n{recipe_tables()}\n{TABLES_END}{tail}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m train.recipes", description="the recipes, listed or documented")
    parser.add_argument("--write-docs", action="store_true", help="rewrite docs/training.md's tables from recipes/")
    if parser.parse_args().write_docs:
        write_docs_tables()
    else:
        print("\n".join(recipe_names()))
