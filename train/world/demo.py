"""The world's side of the demo: fresh scenes, their ground truth under any prompts, per-image scores,
and the vocabulary the bundled models know.

The bundled segmenters and their tiny CLIP were trained on this world only, so on a world scene the
demo can say what is right: the ground truth of a scene under a prompt set is the world's
prompt-dependent target (:func:`train.world.hierarchy.prompt_target`, the rule training and
world-mixed use), and each model's mIoU and proposal recall on that one image are measured against it
with the evaluator's own metrics. The demo (``app.py``) calls these functions; :mod:`demo.comparison` stays
free of the world.

Demo scenes are ``render_scene(DEMO_SEED_OFFSET + seed, DEMO_SCENE_SIZE)``: every class may appear,
and the seed space is apart from training (small seeds, seen classes only) and from the benchmarks
(offsets above 2e9), so a scene shown with a seed is one no model trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pmp.metrics import ProposalRecall, SemSegMetric
from train.world.benchmarks import mixed_prompts
from train.world.canvas import IGNORE
from train.world.hierarchy import is_seen, names_present, prompt_target
from train.world.scene import Scene, render_scene
from train.world.vocabulary import ALL_NAMES, COLOUR_NAMES, GRANULARITIES, GRANULARITY, plural

DEMO_SCENE_SIZE = 256  # the bundled models resize to their 128 px; the larger picture is easier to read
DEMO_SEED_OFFSET = 1_000_000_000
MAX_DEMO_SEED = 999_999_999

# Words the world's captions use around its names; a prompt made of these and the names is one the
# bundled CLIP has read in training (colours, counts and the descriptive words of the captions; a test
# checks that the captions use no other word).
_CAPTION_WORDS = frozenset(
    "a an the and with of in on at up is there this no one two three four five six seven eight nine above around "
    "under left right middle top distance view photo picture image scene crop close look kind thing things objects "
    "only room row box pieces shirt s pine autumn shiny long tall round glowing framed painted parked floating "
    "sitting standing waiting clear dark light pale golden lush fresh dry empty evening overcast asphalt brick "
    "stone wooden wheat ploughed".split()
)
KNOWN_WORDS: frozenset[str] = frozenset(
    word
    for name in ALL_NAMES
    for phrase in (name, plural(name))
    for word in phrase.split()
    if word
) | frozenset(COLOUR_NAMES) | _CAPTION_WORDS  # fmt: skip
_WORD = re.compile(r"[a-z]+")


def check_demo_seed(seed: object) -> int:
    """A scene seed typed by a visitor or sent to the API: an integer in [0, MAX_DEMO_SEED]."""
    if isinstance(seed, bool):
        raise ValueError(f"the scene seed must be a whole number from 0 to {MAX_DEMO_SEED:,}, got {seed!r}")
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, str) and seed.strip().isascii() and seed.strip().isdigit():  # not "٥" or "²"
        seed = int(seed.strip())
    if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_DEMO_SEED:
        raise ValueError(f"the scene seed must be a whole number from 0 to {MAX_DEMO_SEED:,}, got {seed!r}")
    return int(seed)


def demo_scene(seed: object) -> Scene:
    """The demo scene of a visitor's seed (checked): same seed, same picture, for anyone."""
    return render_scene(DEMO_SEED_OFFSET + check_demo_seed(seed), DEMO_SCENE_SIZE)


def scene_prompts(scene: Scene) -> list[str]:
    """A prompt set for a fresh scene, drawn as world-mixed draws its own: each present thing as itself,
    its parts, both, or its group, the present stuff, and a few absent names."""
    return mixed_prompts(scene, scene.seed)


@dataclass(frozen=True)
class GroundTruth:
    """A scene's target under one prompt set, and the prompts it could not say anything about."""

    target: np.ndarray  # (H, W) uint8 index into the prompts, 255 = no prompted name covers the pixel
    prompts: list[str]
    outside_world: list[str]  # prompts that are no world name: they own no pixel of the target

    def present(self) -> list[str]:
        """The prompts with at least one ground-truth pixel."""
        indices = np.unique(self.target[self.target != IGNORE])
        return [self.prompts[int(i)] for i in indices]


def prompt_sets(scene: Scene) -> dict[str, list[str]]:
    """The scene's two prompt sets of the prompt-change view: its stuff with its things whole ("wholes"),
    and its stuff with its things by their parts ("parts")."""
    present = names_present(scene.semantic, scene.parts)
    stuff = list(present["stuff"])
    return {"wholes": stuff + list(present["thing"]), "parts": stuff + list(present["part"])}


def ground_truth(scene: Scene, prompts: list[str]) -> GroundTruth:
    """The prompt-dependent target of ``scene``; prompts outside the world's names claim nothing."""
    world = [name for name in prompts if name in GRANULARITY]
    outside = [name for name in prompts if name not in GRANULARITY]
    sub_target = prompt_target(scene.semantic, scene.parts, world)  # indexes ``world``
    to_prompt = np.array([prompts.index(name) for name in world] + [IGNORE], np.uint8)
    target = to_prompt[np.where(sub_target == IGNORE, len(world), sub_target)]
    return GroundTruth(target=target, prompts=list(prompts), outside_world=outside)


@dataclass(frozen=True)
class ImageScores:
    miou: float  # over the prompts with ground-truth pixels; NaN when there are none
    recall: float  # proposal recall: class-balanced mean best IoU of the proposals per ground-truth segment
    scored: int  # prompts with ground-truth pixels
    iou: tuple[float, ...] = ()  # per prompt (NaN: no ground-truth pixel)


def image_scores(truth: GroundTruth, semantic: np.ndarray, proposals: np.ndarray) -> ImageScores:
    """One model on one image, scored as ``train.evaluate`` scores a benchmark (same metric classes).

    ``semantic`` (H, W) indexes the prompts (-1 = nothing), ``proposals`` (N, H, W) in [0, 1], both at
    the scene's size.
    """
    count = len(truth.prompts)
    semseg = SemSegMetric(count, ignore_label=IGNORE)
    semseg.update(np.asarray(semantic).astype(np.int64), truth.target)
    recall = ProposalRecall(count, ignore_label=IGNORE)
    recall.update(np.asarray(proposals, dtype=np.float32), truth.target)
    scores = semseg.compute()
    return ImageScores(
        miou=scores.miou,
        recall=recall.compute().mean_best_iou,
        scored=len(truth.present()),
        iou=tuple(float(value) for value in scores.iou),
    )


def vocabulary() -> dict[str, list[tuple[str, bool]]]:
    """Every world name by granularity (stuff, things, parts, groups), each with whether segmentation
    training labelled it (seen) or not (unseen: reachable only through CLIP's text)."""
    return {
        level: [(name, is_seen(name)) for name in ALL_NAMES if GRANULARITY[name] == level] for level in GRANULARITIES
    }


def unknown_words(prompt: str) -> list[str]:
    """The words of ``prompt`` that the bundled CLIP never read in training (the world's names, colours
    and caption words are all it read); empty for a prompt it knows."""
    words = _WORD.findall(prompt.lower())
    if not words:  # digits or symbols only
        return [prompt]
    return [word for word in dict.fromkeys(words) if word not in KNOWN_WORDS]
