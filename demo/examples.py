"""The page's examples: world scenes where the two models differ (picked and measured by
``python -m demo.pick_examples``) and photographs, listed in ``examples/*.json``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.handlers import scene_png
from pmp.images import IMAGE_SUFFIXES
from train.world.demo import (
    check_demo_seed,
    demo_scene,
)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One row of the page's examples: a world scene (``seed``) or an image file, with its prompts."""

    image: str
    prompts: str
    seed: int | None = None
    second_prompts: str = ""
    caption: str = ""

    @property
    def label(self) -> str:
        """The example's button: the caption's headline (before its colon), whole words, never cut mid-sentence."""
        return self.caption.split(":")[0].strip() or self.prompts

    def row(self) -> list[Any]:
        return [self.image, self.prompts, self.seed, self.second_prompts]


def read_examples(folder: Path = EXAMPLES_DIR, scenes: Path | None = None) -> list[Example]:
    """The examples of ``folder/*.json``; a missing or broken entry is skipped (and logged).

    Each JSON file holds one object or a list of objects. A world scene is given by its seed and drawn
    into ``scenes`` (skipped without it): {"seed": 12, "prompts": "car", "second_prompts": "car, wheel",
    "caption": "..."}; an image file by its path relative to the JSON file: {"image": "cat.jpg", "prompts":
    "cat"}. Without any JSON file, every image in the folder is an example with empty prompts.
    """
    if not folder.is_dir():
        return []
    specs = sorted(folder.glob("*.json"))
    if not specs:
        return [
            Example(str(path.resolve()), "")
            for path in sorted(folder.iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
    examples = []
    for spec in specs:
        try:
            entries = json.loads(spec.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            logger.warning("skipping example file %s: %s", spec, error)
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, dict):
                continue
            text = {key: str(entry.get(key, "")) for key in ("prompts", "second_prompts", "caption")}
            if "seed" in entry and scenes is not None:
                try:
                    seed = check_demo_seed(entry["seed"])
                except ValueError as error:
                    logger.warning("skipping example %s in %s: %s", entry, spec, error)
                    continue
                examples.append(
                    Example(scene_png(seed, demo_scene(seed), Path(scenes) / "examples"), seed=seed, **text)
                )
            elif "image" in entry and (spec.parent / str(entry["image"])).is_file():
                examples.append(Example(str((spec.parent / str(entry["image"])).resolve()), **text))
    return examples
