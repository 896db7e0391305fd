"""Training recipes are files, ``recipes/<host>.json``, each value with the reference it comes from.

A recipe is named ``<host>-<variant>``: the host's file and a variant that sets only the decoder's text
mode. The paper-scale hosts are OVSeg's two (``ovseg-swinb-vitl14``, ``ovseg-r101c-vitb16``) and
Mask2Former-style stage 1 with a pooled stage 2 (``m2f-r50-vitb16``, ``m2f-swinb-vitl14``), each as
``-baseline``, ``-pmp`` and ``-pmp_residual``; ``world`` is the bundled models' recipe, with every text mode
of Fig. 5 as a variant and its studies (the 64-channel head the sweeps ran with, the stage-1 and pixel
decoder pilots) as ``world-<variant>-<study>``. A file gives every value it sets with its source (file and
key of OVSeg's or Mask2Former's config, "the paper", or "our choice" with the reason); docs/training.md
shows them as tables generated from the files (``python -m train.recipes --write-docs``).
``python -m train.train_segmenter --recipe NAME --print-config`` prints a recipe resolved, every field as
a run would use it. :func:`world_model` turns the bundled model's stage-1 knobs for the sweeps.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pmp.config import PixelDecoderConfig, SegmenterConfig
from train.configs import SegTrainConfig
from train.datasets import REAL_DATASETS, training_vocabulary

WORLD_BACKBONE = "regnetx_002"  # timm RegNetX-200MF, trained from scratch (recipes/world.json)
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
    """The bundled segmenter (``recipes/world.json``'s model) with stage 1's knobs turned.

    ``num_queries`` (every proposal is cropped, so ``crop_top_k`` follows it), ``width`` (the FPN's and the
    mask embeddings' channels, the decoder's hidden size; feed-forward 4x, one attention head per 16
    channels), ``backbone`` (a timm CNN) and ``pixel_decoder`` (:func:`world_pixel_decoder`'s kind). With
    the defaults it is the file's model itself: OVSeg's design at toy scale (a RegNetX-200MF from scratch,
    MaskFormer's FPN, a 6-layer Mask2Former decoder, the tiny CLIP's masked crops and their boxes), whose
    choices and their reasons the file gives. The sweeps and pilots of docs/results.md turn the knobs.
    """
    config = file_recipe(recipe_files()["world"], "baseline" if text_mode == "none" else text_mode).model
    config.decoder = dataclasses.replace(
        config.decoder, num_queries=num_queries, hidden_dim=width, num_heads=width // 16, dim_feedforward=4 * width
    )
    config.pixel_decoder = world_pixel_decoder(pixel_decoder, width)
    config.backbone = dataclasses.replace(config.backbone, name=backbone)
    config.crop_top_k = num_queries
    config.validate()
    return config


def world_pixel_decoder(kind: str, width: int) -> PixelDecoderConfig:
    """MaskFormer's FPN (OVSeg's, the bundled pair's) or Mask2Former's deformable encoder scaled to ``width``:
    Mask2Former's six layers and 4x feed-forward, and one head per 16 channels (8 at the bundled 128, as
    Mask2Former's 8 at 256)."""
    if kind == "fpn":
        return PixelDecoderConfig(kind="fpn", conv_dim=width, mask_dim=width)
    return PixelDecoderConfig(
        kind=kind, conv_dim=width, mask_dim=width, num_heads=width // 16, dim_feedforward=4 * width
    )


# ------------------------------------------------------------------------------- recipes/*.json
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


def file_recipe(path: Path, variant: str, study: str = "") -> SegTrainConfig:
    """The training config of ``<host>-<variant>[-<study>]``: the file's values over the defaults, the variant's
    text mode, and a study's changes (a file's ``studies``: the world's sweeps and pilots) over them."""
    recipe = read_recipe_file(path)
    if variant not in recipe["variants"]:
        raise ValueError(f"{path.stem} has no variant {variant!r}; accepted: {', '.join(recipe['variants'])}")
    config = json.loads(json.dumps(recipe["config"]))  # a deep copy
    name = f"{path.stem}-{variant}"
    if study:
        studies = recipe.get("studies", {})
        if study not in studies or variant not in studies[study]["variants"]:
            raise ValueError(f"{path.stem} has no study {study!r} of variant {variant!r}")
        config = _merged(config, studies[study]["config"])
    config["model"].setdefault("decoder", {})["text_mode"] = recipe["variants"][variant]
    config["model"]["name"] = name  # a study's models carry their variant's name, as they were trained
    model = config["model"]
    if (
        model.get("clip_weight_unseen") is not None
        and not model.get("training_names")
        and config["data"] in REAL_DATASETS
    ):
        # Eq. 3's second weight needs the training vocabulary, which training writes from the data anyway
        model["training_names"] = list(training_vocabulary(REAL_DATASETS[config["data"]].class_names))
    return SegTrainConfig.from_dict(config)


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` written over it, nested dicts merged key by key."""
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = (
            _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return merged


def recipe_table(host: str, folder: Path = RECIPES_DIR) -> str:
    """docs/training.md's table of a recipe file: every value it sets and where it comes from (Markdown)."""
    recipe = read_recipe_file(recipe_files(folder)[host])
    lines = [f"**`{host}`**: {recipe['description']}", "", "| field | value | source |", "|---|---|---|"]
    for key, value in flat_values(recipe["config"]).items():
        shown = f"{len(value)} templates" if key == "model.clip.templates" else json.dumps(value)
        lines.append(f"| `{key}` | `{shown}` | {recipe['sources'].get(key, '**no source**')} |")
    variants = ", ".join(f"`-{name}`: `{mode}`" for name, mode in recipe["variants"].items())
    lines += ["", f"Variants (`model.decoder.text_mode`): {variants}. {recipe['variant_source']}."]
    for study, spec in recipe.get("studies", {}).items():
        changes = ", ".join(f"`{key}` = `{json.dumps(value)}`" for key, value in flat_values(spec["config"]).items())
        which = ", ".join(f"`{host}-{variant}-{study}`" for variant in spec["variants"])
        lines += ["", f"Study `-{study}` ({which}): {spec['why']}; {changes}."]
    return "\n".join(lines)


def file_recipe_names(folder: Path = RECIPES_DIR) -> list[str]:
    names = []
    for host, path in recipe_files(folder).items():
        recipe = read_recipe_file(path)
        names += [f"{host}-{variant}" for variant in recipe["variants"]]
        for study, spec in recipe.get("studies", {}).items():
            names += [f"{host}-{variant}-{study}" for variant in spec["variants"]]
    return names


def previous_recipe(text_mode: str) -> str:
    """The recipe of a text mode with the previous bundled pair's 64-channel head: what the query sweep, the
    Fig. 5 ablations and the stage-1 pilots' control were trained with, kept so that they reproduce."""
    return f"{world_name(text_mode)}-width{PREVIOUS_WIDTH}"


# Stage-1 capacity pilots against the 64-channel recipe (baseline, the bundled schedule): is the mask gap a
# matter of stage 1's size? The other pilot, the 128-channel head, won and is today's world-baseline.
STAGE1_PILOTS = ("world-baseline-regnetx004",)
# Mask2Former's deformable pixel decoder in place of OVSeg's FPN, the rest the bundled baseline's.
PIXEL_DECODER_PILOTS = ("world-baseline-msdeform",)


def recipe_names() -> list[str]:
    """Every recipe :func:`get_recipe` knows: ``<host>-<variant>[-<study>]`` of every file in recipes/."""
    return file_recipe_names()


def get_recipe(name: str) -> SegTrainConfig:
    """A recipe by name: ``<host>-<variant>`` of ``recipes/<host>.json``, or ``<host>-<variant>-<study>``."""
    for host, path in sorted(recipe_files().items(), key=lambda item: -len(item[0])):
        if name.startswith(f"{host}-"):
            variant, _, study = name[len(host) + 1 :].partition("-")
            try:
                return file_recipe(path, variant, study)
            except ValueError:
                break
    raise ValueError(f"unknown recipe {name!r}; accepted: {', '.join(recipe_names())}")


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
