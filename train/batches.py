"""Training batches for the segmenter: deterministic samples by global index and the prompt schemes.

A resumed or multi-rank run sees exactly the same data: sample ``i`` is a function of the seed and
``i`` alone. The prompt scheme is the same for every text mode, so the baseline and PMP see the same
prompts and targets:

* the synthetic world (:func:`sample_world_prompts`): each present thing is prompted at a random
  granularity - itself, its seen parts, both, or its seen group - present stuff as it is, and
  negatives only among seen names with no pixel in the image; the target is the prompt-dependent one
  (:func:`train.world.hierarchy.prompt_target`: the finest prompted name of each pixel wins, pixels with
  no prompted name get no target);
* real datasets (:func:`sample_prompt_ids`): the present classes plus random absent ones.

With ``training_prompts="all"`` (the paper-scale recipes) every image is prompted with every training
class instead, in the vocabulary's order: the paper's "C = C_train during the training stage", as OVSeg
classifies against all 171 COCO-Stuff names. The text tokens PMP reads in training are then the class
embeddings of the whole training vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pmp.images import normalize_pixels
from train import world
from train.augment import LargeScaleJitter, SemSegTrainTransform
from train.configs import SegTrainConfig
from train.datasets import build_dataset
from train.world.hierarchy import (
    GROUP_OF,
    SEEN_GROUPS,
    SEEN_NAMES,
    granularity_prompts,
    names_present,
    prompt_target,
    seen_parts_of,
)
from train.world.vocabulary import CLASS_ID, PART_ID


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) int64: world: global class ids; real data: training-vocabulary index; 255 = ignore
    parts: np.ndarray | None = None  # world only: (H, W) global part ids, 255 = not a part


class TrainingData:
    """Deterministic samples by global index, so a resumed or multi-rank run sees exactly the same data."""

    def __init__(self, config: SegTrainConfig) -> None:
        self.config = config
        if config.data == "world":
            self.class_names = list(SEEN_NAMES)  # classes, seen parts and seen groups
            self._dataset = None
        else:
            if config.data_root is None:
                raise ValueError(f"--data-root is required for dataset {config.data!r}")
            self._dataset = build_dataset(config.data, config.data_root, "train")
            if config.augmentation == "lsj":
                self._transform = LargeScaleJitter(config.crop_size, scale_range=config.lsj_scale)
            else:
                self._transform = SemSegTrainTransform(
                    config.crop_size,
                    min_sizes=config.min_size_train,
                    max_size=config.max_size_train,
                    color_aug_ssd=config.color_aug_ssd,
                )
            self.class_names = list(self._dataset.class_names)

    def sample(self, index: int) -> Sample:
        seed = self.config.seed * 1_000_003 + index
        if self._dataset is None:
            scene = world.render_training_scene(seed, self.config.crop_size)
            return Sample(scene.image, scene.semantic.astype(np.int64), scene.parts.astype(np.int64))
        rng = np.random.default_rng(seed)
        permutation_seed, position = divmod(index, len(self._dataset))
        order = np.random.default_rng(self.config.seed + permutation_seed).permutation(len(self._dataset))
        image, label = self._dataset[int(order[position])]
        image, label = self._transform(image, label, rng)
        label = np.where(label == self._dataset.ignore_label, 255, label)
        return Sample(image, label.astype(np.int64))


def sample_world_prompts(
    semantic: np.ndarray,
    parts: np.ndarray,
    rng: np.random.Generator,
    negative_prob: float = 0.5,
    present_prob: float = 1.0,
) -> list[str]:
    """The world's training prompts for one image (see the module docstring), shuffled; seen names only.

    ``present_prob`` < 1 leaves out each present stuff class and thing with that probability (keeping at
    least one prompt): its pixels then get no target, so the prompts decide what to segment.
    """
    present = names_present(semantic, parts)
    claimed = set(sum(present.values(), ()))
    prompts: list[str] = []
    for stuff in present["stuff"]:
        if stuff in SEEN_NAMES and (present_prob >= 1.0 or rng.random() < present_prob):
            prompts.append(stuff)
    for thing in present["thing"]:
        if thing not in SEEN_NAMES or (present_prob < 1.0 and rng.random() >= present_prob):
            continue
        own_parts = np.unique(parts[semantic == CLASS_ID[thing]])
        visible = [part for part in seen_parts_of(thing) if PART_ID[part] in own_parts]
        group = GROUP_OF.get(thing) if GROUP_OF.get(thing) in SEEN_GROUPS else None
        prompts += granularity_prompts(thing, visible, group, rng)
    prompts = list(dict.fromkeys(prompts))
    absent = [name for name in SEEN_NAMES if name not in claimed]  # a negative must claim no pixel
    prompts += [name for name in absent if rng.random() < negative_prob]
    if not prompts:  # nothing prompted and no negative drawn: one negative, so the image still trains no-object
        prompts = [absent[int(rng.integers(len(absent)))]] if absent else list(present["stuff"][:1])
    return [prompts[i] for i in rng.permutation(len(prompts))]


def sample_prompt_ids(
    present: np.ndarray, vocabulary_size: int, negative_prob: float, rng: np.random.Generator, present_prob: float = 1.0
) -> np.ndarray:
    """The training prompt scheme: class ids to prompt, present classes + random negatives, shuffled.

    ``present_prob`` < 1 (an investigated variant) also leaves out each present class with probability
    1 - present_prob (keeping at least one); its pixels then get no target, so a proposal for an
    unprompted class should be "no object": the prompts decide what to segment.
    """
    absent = np.setdiff1d(np.arange(vocabulary_size), present)
    if present_prob < 1.0 and present.size > 1:
        keep = rng.random(present.size) < present_prob
        keep[rng.integers(present.size)] = True
        present = present[keep]
    negatives = absent[rng.random(absent.size) < negative_prob]
    prompt_ids = np.concatenate([present, negatives]).astype(np.int64)
    if prompt_ids.size == 0:  # an image with only ignored pixels still needs one prompt
        prompt_ids = rng.choice(vocabulary_size, size=1)
    return rng.permutation(prompt_ids)


def rank_sample_indices(step: int, rank: int, per_rank: int, global_batch: int) -> range:
    """The global sample indices rank ``rank`` trains on at ``step``: its slice of the step's global batch,
    so that the ranks together take samples ``step * global_batch`` onwards, whatever their number."""
    first = step * global_batch + rank * per_rank
    return range(first, first + per_rank)


class StepSamples(torch.utils.data.Dataset):
    """Item k: the samples rank ``rank`` trains on at step ``start_step + k``, and their pixels stacked
    (B, H, W, 3) uint8, which a DataLoader can pin. A loader over it with workers gives exactly the batches
    the synchronous path builds, because every sample is a function of its global index."""

    def __init__(self, data: TrainingData, start_step: int, steps: int, rank: int, per_rank: int, global_batch: int):
        self.data, self.start_step, self.steps = data, start_step, steps
        self.rank, self.per_rank, self.global_batch = rank, per_rank, global_batch

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def __getitem__(self, k: int) -> tuple[list[Sample], torch.Tensor]:
        indices = rank_sample_indices(self.start_step + k, self.rank, self.per_rank, self.global_batch)
        samples = [self.data.sample(i) for i in indices]
        return samples, torch.from_numpy(np.stack([sample.image for sample in samples]))


def step_batches(
    data: TrainingData, config: SegTrainConfig, start_step: int, rank: int, per_rank: int, pin_memory: bool
) -> Any:
    """(samples, pixels) per step from ``start_step``: built in ``config.num_workers`` worker processes with
    ``config.prefetch_factor`` steps prefetched each and pinned pixels, or in this process when 0 workers."""
    steps = StepSamples(data, start_step, config.steps, rank, per_rank, config.batch_size)
    if config.num_workers == 0:
        return (steps[k] for k in range(len(steps)))
    return torch.utils.data.DataLoader(
        steps,
        batch_size=None,  # an item is already one step's batch
        shuffle=False,
        num_workers=config.num_workers,
        prefetch_factor=config.prefetch_factor,
        pin_memory=pin_memory,
    )


def build_batch(
    samples: list[Sample],
    step_seed: int,
    class_embeddings: torch.Tensor,
    config: SegTrainConfig,
    device: torch.device,
    pixels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images (B,3,H,W) normalised, text (B,M,C) padded, text_mask (B,M), and per-image targets.

    ``pixels``: the samples' images already stacked (B, H, W, 3) uint8 (pinned by a DataLoader), moved to
    ``device`` before they are normalised."""
    rng = np.random.default_rng(step_seed)
    vocabulary_size = class_embeddings.shape[0]
    prompt_lists, targets = [], []
    vocabulary = {name: i for i, name in enumerate(SEEN_NAMES)}
    for sample in samples:
        if sample.parts is not None:  # the world: prompt-dependent targets
            if config.training_prompts == "all":
                names = list(SEEN_NAMES)
            else:
                names = sample_world_prompts(sample.label, sample.parts, rng, config.negative_prob, config.present_prob)
            target = prompt_target(sample.label, sample.parts, names)  # (H, W) index into names, 255 = none
            prompt_lists.append(np.array([vocabulary[name] for name in names], dtype=np.int64))
            claimed = [k for k in range(len(names)) if (target == k).any()]
            masks = np.stack([target == k for k in claimed]) if claimed else np.zeros((0, *target.shape), bool)
            targets.append(
                {
                    "labels": torch.tensor(claimed, dtype=torch.int64).to(device),
                    "masks": torch.from_numpy(masks).to(device),
                }
            )
            continue
        labelled = np.unique(sample.label[sample.label != 255])
        if config.training_prompts == "all":  # the paper's C = C_train, in the vocabulary's order (OVSeg's)
            prompt_ids = np.arange(vocabulary_size, dtype=np.int64)
        else:
            prompt_ids = sample_prompt_ids(labelled, vocabulary_size, config.negative_prob, rng, config.present_prob)
        prompt_lists.append(prompt_ids)
        present = labelled[np.isin(labelled, prompt_ids)]  # the labelled classes that were prompted get targets
        position = {int(c): i for i, c in enumerate(prompt_ids)}
        labels = torch.tensor([position[int(c)] for c in present], dtype=torch.int64)
        masks = (
            torch.from_numpy(np.stack([sample.label == c for c in present]))
            if present.size
            else torch.zeros((0, *sample.label.shape), dtype=torch.bool)
        )
        targets.append({"labels": labels.to(device), "masks": masks.to(device)})
    max_prompts = max(len(p) for p in prompt_lists)
    text = class_embeddings.new_zeros((len(samples), max_prompts, class_embeddings.shape[1]))
    text_mask = torch.zeros((len(samples), max_prompts), dtype=torch.bool)
    for b, prompt_ids in enumerate(prompt_lists):
        text[b, : len(prompt_ids)] = class_embeddings[torch.from_numpy(prompt_ids)]
        text_mask[b, : len(prompt_ids)] = True
    if pixels is None:
        pixels = torch.from_numpy(np.stack([s.image for s in samples]))
    pixels = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)  # (B,3,H,W)
    images = normalize_pixels(pixels, config.model.pixel_mean, config.model.pixel_std)
    return images, text.to(device), text_mask.to(device), targets
