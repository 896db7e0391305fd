"""Training batches for the segmenter: deterministic samples by global index and the prompt scheme.

A resumed or multi-rank run sees exactly the same data: sample ``i`` is a function of the seed and
``i`` alone. The prompt scheme (which classes are prompted, which prompted classes get targets) is the
same for every text mode, so the baseline and PMP see the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pmp.images import normalize_pixels
from train.configs import SegTrainConfig


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) int64 index into the training vocabulary, 255 = ignore


class TrainingData:
    """Deterministic samples by global index, so a resumed or multi-rank run sees exactly the same data."""

    def __init__(self, config: SegTrainConfig) -> None:
        self.config = config
        if config.data == "world":
            from train import world
            from train.world import vocabulary as vocab

            self.class_names = list(vocab.SEEN_CLASSES)
            self._world = world
            self._dataset = None
        else:
            from train.datasets import SemSegTrainTransform, build_dataset

            if config.data_root is None:
                raise ValueError(f"--data-root is required for dataset {config.data!r}")
            self._dataset = build_dataset(config.data, config.data_root, "train")
            self._transform = SemSegTrainTransform(config.crop_size)
            self.class_names = list(self._dataset.class_names)

    def sample(self, index: int) -> Sample:
        seed = self.config.seed * 1_000_003 + index
        if self._dataset is None:
            scene = self._world.render_training_scene(seed, self.config.crop_size)
            return Sample(scene.image, self._world.training_target(scene).astype(np.int64))
        rng = np.random.default_rng(seed)
        permutation_seed, position = divmod(index, len(self._dataset))
        order = np.random.default_rng(self.config.seed + permutation_seed).permutation(len(self._dataset))
        image, label = self._dataset[int(order[position])]
        image, label = self._transform(image, label, rng)
        label = np.where(label == self._dataset.ignore_label, 255, label)
        return Sample(image, label.astype(np.int64))


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


def build_batch(
    samples: list[Sample],
    step_seed: int,
    class_embeddings: torch.Tensor,
    config: SegTrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images (B,3,H,W) normalised, text (B,M,C) padded, text_mask (B,M), and per-image targets."""
    rng = np.random.default_rng(step_seed)
    vocabulary_size = class_embeddings.shape[0]
    prompt_lists, targets = [], []
    for sample in samples:
        labelled = np.unique(sample.label[sample.label != 255])
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
    pixels = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float().div_(255.0)  # (B,3,H,W)
    images = normalize_pixels(pixels, config.model.pixel_mean, config.model.pixel_std).to(device)
    return images, text.to(device), text_mask.to(device), targets
