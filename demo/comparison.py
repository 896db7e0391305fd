"""The comparison the demo shows, as plain functions a notebook or script can call too.

:func:`run_comparison` segments one image with both models and builds every view (overlays, picked
masks, score tables, proposal grids, differences, downloads); nothing here knows Gradio (the adapter is
in ``app.py``). Nothing trusts its caller either: image, prompts and every setting are checked here,
because every Gradio event is also a public HTTP API. Bad input raises :class:`DemoInputError` (a
ValueError) with a message for the user. Models are loaded once into :class:`DemoModels`; no request
writes any shared state except the files of its own output folder.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from demo.outputs import request_folder, write_downloads
from pmp.config import STAGE2_MODES, SegmenterConfig
from pmp.images import ImageError, load_image
from pmp.prompts import PromptError, parse_prompts
from pmp.segmenter import AUTOCAST_DTYPES, Segmenter
from pmp.visualize import (
    colour_for,
    mask_overlay,
    overlay,
    proposal_grid,
)

logger = logging.getLogger(__name__)

MODEL_NAMES = ("baseline", "pmp")
GALLERY_SIDE = 512  # per-prompt mask pictures are drawn at most this large
MODEL_TITLES = {"baseline": "Baseline (OVSeg-style)", "pmp": "PMP"}


DIFFERENT_IOU = 0.5  # a prompt's picked masks "differ" between the models below this IoU
TABLE_HEADERS = ["prompt", "#", "p", "p_hat", "p_out", "area %"]  # #: picked proposal; p: stage 1; p_hat: CLIP
DIFF_HEADERS = ["prompt", "IoU", "baseline #", "PMP #", "baseline p_out", "PMP p_out"]
TIMING_KEYS = ("text", "stage1", "stage2", "post")


class DemoInputError(ValueError):
    """A request the demo cannot serve; the message is shown to the user as is."""


@dataclass(frozen=True)
class DemoLimits:
    """What one request may ask for. Prompt limits are capped by both models' own config limits."""

    max_prompts: int = 30
    max_prompt_chars: int = 80
    max_text_chars: int = 4000  # the whole prompt box: bounds the caption parser's work before any limit above
    max_pixels: int = 40_000_000
    max_side: int = 1024  # results are drawn at this size at most; the model itself resizes to its image_size
    output_max_age_s: float = 1800.0  # download folders older than this are deleted by later requests


@dataclass
class DemoModels:
    """The two segmenters, loaded once when the app starts and shared (read-only) by all requests."""

    baseline: Any
    pmp: Any
    limits: DemoLimits = field(default_factory=DemoLimits)

    @classmethod
    def load(
        cls,
        baseline: str | Path | None = None,
        pmp: str | Path | None = None,
        *,
        device: str | None = None,
        autocast: str = "none",
        clip_weights: tuple[float, float] | None = None,
    ) -> "DemoModels":
        """Bundled names, local folders or Hub ids (None: bundled ``baseline`` / ``pmp``); cuda if available.

        ``autocast`` (a key of :data:`pmp.segmenter.AUTOCAST_DTYPES`) sets both models' ``autocast_dtype``:
        "bfloat16" is about 1.2x faster on a CPU with AVX-512 BF16 and labels >99% of pixels the same.
        ``clip_weights`` (training names, other names) sets both configs' Eq. 3 weights as FC-CLIP splits
        them (``clip_weight``, ``clip_weight_unseen``; ValueError for a model whose config does not list
        its training names, or for a weight outside [0, 1])
        """
        if autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_DTYPES)}, got {autocast!r}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        models = cls(
            baseline=Segmenter.from_pretrained(baseline or "baseline", device=device),
            pmp=Segmenter.from_pretrained(pmp or "pmp", device=device),
        )
        for _, model in models.items():
            model.autocast_dtype = AUTOCAST_DTYPES[autocast]
            if clip_weights is not None:
                seen, unseen = (float(w) for w in clip_weights)
                model.config = dataclasses.replace(model.config, clip_weight=seen, clip_weight_unseen=unseen)
                model.config.validate()
        return models

    def clip_weights(self) -> tuple[float, float | None]:
        """The CLIP weights the demo opens with: both models' Eq. 3 weight (the paper's 0.65 if they differ)
        and their weight for prompts outside the training names (None: one weight for every prompt, the
        paper's, also when they differ)."""
        seen = {model.config.clip_weight for _, model in self.items()}
        unseen = {model.config.clip_weight_unseen for _, model in self.items()}
        default = SegmenterConfig().clip_weight
        return (seen.pop() if len(seen) == 1 else default), (unseen.pop() if len(unseen) == 1 else None)

    def items(self) -> list[tuple[str, Any]]:
        return [("baseline", self.baseline), ("pmp", self.pmp)]

    def stage2_mode(self) -> str:
        """The stage 2 the demo opens with: the one both models were configured with ("pool" if they differ)."""
        modes = {model.config.stage2_mode for _, model in self.items()}
        return modes.pop() if len(modes) == 1 else "pool"

    def effective_limits(self) -> DemoLimits:
        """The demo's limits, lowered to what both models' configs accept."""
        configs = [model.config for _, model in self.items()]
        max_prompts = min([self.limits.max_prompts] + [c.max_prompts for c in configs])
        max_chars = min([self.limits.max_prompt_chars] + [c.max_prompt_chars for c in configs])
        return dataclasses.replace(self.limits, max_prompts=max_prompts, max_prompt_chars=max_chars)


@dataclass
class ModelView:
    """One column of the demo: what one model made of the request."""

    overlay: Image.Image
    masks: list[tuple[Image.Image, str]]  # per prompt: the picked proposal drawn on the image, caption
    table: list[list[Any]]  # rows of TABLE_HEADERS
    grid_by_score: Image.Image
    grid_by_index: Image.Image
    timings: dict[str, float]  # seconds per stage, plus "total"
    picked: list[np.ndarray] = field(repr=False)  # per prompt: (H, W) bool picked mask

    def timings_markdown(self) -> str:
        parts = [f"{key.replace('stage', 'stage ')} {1000 * self.timings.get(key, 0.0):.0f} ms" for key in TIMING_KEYS]
        return " · ".join(parts) + f" · **total {1000 * self.timings.get('total', 0.0):.0f} ms**"


@dataclass
class ComparisonView:
    """Everything one comparison request produced, ready for display or download."""

    labels: list[str]  # the parsed prompts
    views: dict[str, ModelView]
    differences: list[list[Any]]  # rows of DIFF_HEADERS, most different first
    agreement: float  # share of pixels that get the same label (or none) from both models
    downloads: list[Path]
    settings: dict[str, Any]
    folder: Path  # this request's own folder: downloads, and the pictures the UI serves
    results: dict[str, Any] = field(repr=False, default_factory=dict)  # per model: its SegmentationResult
    image: Image.Image | None = field(repr=False, default=None)  # the decoded image both models saw

    def prompts_markdown(self) -> str:
        return prompts_markdown(self.labels)

    def differences_markdown(self) -> str:
        differing = [row[0] for row in self.differences if row[1] < DIFFERENT_IOU]
        head = f"The two models label {100 * self.agreement:.0f}% of the pixels the same. "
        if not differing:
            return head + f"For every prompt the picked masks overlap with IoU >= {DIFFERENT_IOU}."
        names = code_list(differing)
        return (
            head + f"**{len(differing)} of {len(self.labels)}** prompt(s) get a different mask "
            f"(IoU < {DIFFERENT_IOU}): {names}."
        )


def prompts_markdown(labels: list[str]) -> str:
    return f"**{len(labels)} prompt(s):** {code_list(labels)}"


def code_list(texts: list[str]) -> str:
    """Prompts as a comma-separated list of Markdown code spans."""
    return ", ".join(f"`{markdown_safe(text)}`" for text in texts)


def markdown_safe(text: str) -> str:
    """A prompt shown in a Markdown code span: only the backtick that would end the span is replaced.

    No HTML escaping: a code span shows its text literally (Markdown escapes it), so "&lt;" there would
    be seen as the four characters it is made of.
    """
    return text.replace("`", "'")


# --------------------------------------------------------------------------------- input checks


def check_number(value: Any, name: str, low: float, high: float, *, open_interval: bool = False) -> float:
    """A finite float within [low, high] (or (low, high)); the message says what is accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):  # true is not 1.0, a list not a number
        raise DemoInputError(f"{name} must be a number between {low} and {high}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DemoInputError(f"{name} must be a number between {low} and {high}, got {value!r}") from None
    inside = low < number < high if open_interval else low <= number <= high
    if not math.isfinite(number) or not inside:
        bounds = f"strictly between {low} and {high}" if open_interval else f"between {low} and {high}"
        raise DemoInputError(f"{name} must be {bounds}, got {value!r}")
    return number


def check_stage2_mode(value: Any) -> str:
    if value not in STAGE2_MODES:
        raise DemoInputError(f"stage-2 mode must be one of {', '.join(STAGE2_MODES)}, got {value!r}")
    return value


def check_token_limit(models: DemoModels, labels: list[str]) -> None:
    """Every prompt, filled into every CLIP template, must fit each model's text tower."""
    for _, model in models.items():
        try:
            model.check_token_limit(labels)
        except PromptError as error:
            raise DemoInputError(str(error)) from None


def read_prompts(text: Any, limits: DemoLimits) -> list[str]:
    if text is None:
        text = ""
    if not isinstance(text, (str, list, tuple)):
        raise DemoInputError(f"prompts must be text or a list of strings, got {type(text).__name__}")
    if isinstance(text, str) and len(text) > limits.max_text_chars:
        raise DemoInputError(
            f"the prompt text is {len(text):,} characters long; at most {limits.max_text_chars:,} are accepted"
        )
    try:
        return parse_prompts(text, max_prompts=limits.max_prompts, max_chars=limits.max_prompt_chars)
    except PromptError as error:
        raise DemoInputError(str(error)) from None


def read_image(image: Any, limits: DemoLimits) -> Image.Image:
    if image is None or (isinstance(image, str) and not image.strip()):
        raise DemoInputError("no image: upload an image (PNG, JPEG, WebP, GIF, BMP or TIFF) or pick an example")
    try:
        return load_image(image, max_pixels=limits.max_pixels, max_side=limits.max_side)
    except ImageError as error:
        raise DemoInputError(str(error)) from None


# --------------------------------------------------------------------------------- the comparison


def mask_iou(first: np.ndarray, second: np.ndarray) -> float:
    """IoU of two bool masks; two empty masks agree perfectly (1.0)."""
    union = np.logical_or(first, second).sum()
    return 1.0 if union == 0 else float(np.logical_and(first, second).sum() / union)


def mask_iou_matrix(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N, N') IoU of every pair of two bool mask stacks (N, ...) and (N', ...); two empty masks agree (1.0).

    One float32 matrix product of the flattened 0/1 masks (exact: counts stay below 2**24 pixels).
    """
    flat_a = np.asarray(first).reshape(len(first), -1).astype(np.float32)  # (N, P)
    flat_b = np.asarray(second).reshape(len(second), -1).astype(np.float32)  # (N', P)
    intersection = flat_a @ flat_b.T  # (N, N')
    union = flat_a.sum(1)[:, None] + flat_b.sum(1)[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


@dataclass(frozen=True)
class ProposalShift:
    """How far one model's first-stage proposals moved when only the prompts changed."""

    shift: float  # 1 - mean best IoU between the two proposal sets (0: the same masks)
    moved: int  # proposals of the first set whose best match in the second has IoU < DIFFERENT_IOU
    total: int  # proposals in the first set

    @property
    def unmoved(self) -> bool:
        return self.moved == 0 and self.shift < 1e-6

    def markdown(self) -> str:
        if self.unmoved:
            return f"proposals did **not move**: all {self.total} masks are the same under both prompt sets"
        return (
            f"proposals **moved** with the prompts: **{self.moved} of {self.total}** masks changed (overlap with "
            f"their closest match under the other set below {DIFFERENT_IOU} IoU); on average a mask overlaps its "
            f"closest match by {100 * (1 - self.shift):.0f}%"
        )

    def sentence(self, name: str) -> str:
        """One plain sentence for the summary's first line."""
        if self.unmoved:
            return f"{name} proposed the same {self.total} masks under both sets"
        return f"{name} changed {self.moved} of its {self.total} masks"


def proposal_shift(first: np.ndarray, second: np.ndarray, threshold: float = 0.5) -> ProposalShift:
    """Compare two proposal sets of one model on one image, made under two prompt sets.

    ``first`` (N, h, w) and ``second`` (N', h, w) are mask probabilities; each is binarised at
    ``threshold``. Every proposal is matched to its best-IoU partner in the other set (in both
    directions), so the measure needs no query order and works when the count changes with the prompts
    (the Fig. 5 modes that add text proposals). A prompt-agnostic generator (the baseline) gives exactly
    0: its masks do not depend on the prompts at all.
    """
    a, b = (np.asarray(masks) >= threshold for masks in (first, second))
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"proposal sets must share their mask size, got {a.shape[1:]} and {b.shape[1:]}")
    if not len(a) or not len(b):
        return ProposalShift(shift=float(len(a) != len(b)), moved=len(a) if len(b) == 0 else 0, total=len(a))
    iou = mask_iou_matrix(a, b)  # (N, N')
    best_a, best_b = iou.max(1), iou.max(0)
    mean_best = (best_a.sum() + best_b.sum()) / (len(best_a) + len(best_b))
    return ProposalShift(shift=float(1.0 - mean_best), moved=int((best_a < DIFFERENT_IOU).sum()), total=len(a))


def model_view(result: Any, image: Image.Image) -> ModelView:
    """Draw one model's result: overlay + legend, per-prompt masks, score table, proposal grids."""
    labels = list(result.labels)
    semantic = np.asarray(result.semantic)
    area = np.bincount(semantic[semantic >= 0].ravel(), minlength=len(labels)) / max(semantic.size, 1)
    picked = [result.picked_mask(k) for k in range(len(labels))]  # per prompt: the picked proposal, binarised
    small = image.copy()
    small.thumbnail((GALLERY_SIDE, GALLERY_SIDE), Image.Resampling.BILINEAR)
    masks, table = [], []
    for k, (label, (index, score)) in enumerate(zip(labels, result.selected)):
        p, p_hat = float(result.p[index, k]), float(result.p_hat[index, k])
        caption = f"{label} · #{index} · p={p:.2f} · p_hat={p_hat:.2f} · p_out={float(score):.2f}"
        masks.append((mask_overlay(small, picked[k], colour_for(k)), caption))
        table.append(
            [label, int(index), round(p, 2), round(p_hat, 2), round(float(score), 2), round(100 * float(area[k]), 1)]
        )
    scores = np.asarray(result.p_out)  # (N, K)
    best = scores.argmax(1) if scores.size else np.zeros(0, int)
    best_score = scores.max(1) if scores.size else np.zeros(0)
    captions = [f"#{n} {labels[best[n]]} {best_score[n]:.2f}" for n in range(scores.shape[0])]
    colours = [colour_for(int(k)) for k in best]
    proposals = result.mask_logits.float().sigmoid().numpy()  # (N, h, w) at mask resolution: thumbnails need no more
    columns = 5 if len(captions) <= 25 else 10  # few proposals: bigger thumbnails per row shown
    timings = {key: float(value) for key, value in result.timings.items()}
    return ModelView(
        overlay=overlay(image, semantic, labels),
        masks=masks,
        table=table,
        grid_by_score=proposal_grid(
            proposals, image, captions, sort_by_scores=best_score, columns=columns, colours=colours
        ),
        grid_by_index=proposal_grid(proposals, image, captions, columns=columns, colours=colours),
        timings=timings,
        picked=picked,
    )


def compare_results(
    labels: list[str], results: dict[str, Any], views: dict[str, ModelView]
) -> tuple[list[list[Any]], float]:
    """Per prompt: IoU of the two picked masks (ascending), and the pixel agreement of the label maps."""
    rows = []
    for k, label in enumerate(labels):
        base_index, base_score = results["baseline"].selected[k]
        pmp_index, pmp_score = results["pmp"].selected[k]
        iou = mask_iou(views["baseline"].picked[k], views["pmp"].picked[k])
        rows.append(
            [
                label,
                round(iou, 2),
                int(base_index),
                int(pmp_index),
                round(float(base_score), 2),
                round(float(pmp_score), 2),
            ]
        )
    rows.sort(key=lambda row: row[1])
    agreement = float((np.asarray(results["baseline"].semantic) == np.asarray(results["pmp"].semantic)).mean())
    return rows, agreement


def read_settings(models: DemoModels, clip_weight: Any, stage2_mode: Any, mask_threshold: Any) -> dict[str, Any]:
    """The request's settings, checked: {"clip_weight", "stage2_mode" (None: the models' own), "mask_threshold"}."""
    return {
        "clip_weight": check_number(clip_weight, "CLIP weight", 0.0, 1.0),
        "stage2_mode": check_stage2_mode(models.stage2_mode() if stage2_mode is None else stage2_mode),
        "mask_threshold": check_number(mask_threshold, "mask threshold", 0.0, 1.0, open_interval=True),
    }


def read_request_prompts(models: DemoModels, prompt_text: Any, box: str | None = None) -> list[str]:
    """Parsed prompts that both models accept (count, length, and their CLIPs' token limits); an error names
    the ``box`` the text came from when the page has several."""
    try:
        labels = read_prompts(prompt_text, models.effective_limits())
        check_token_limit(models, labels)
    except DemoInputError as error:
        raise DemoInputError(f"{box}: {error}" if box else str(error)) from None
    return labels


def segment_all(
    models: DemoModels, picture: Image.Image | dict[str, Any], labels: list[str], settings: dict[str, Any]
) -> dict[str, Any]:
    """Both models' results on one image (or each model's prepared :meth:`Segmenter.set_image` state) and one
    prompt list, in MODEL_NAMES order."""
    results: dict[str, Any] = {}
    with torch.inference_mode():
        for name, model in models.items():
            try:
                image = picture[name] if isinstance(picture, dict) else picture
                results[name] = model.segment(image, labels, **settings)
            except ValueError as error:  # the Segmenter's own input checks
                raise DemoInputError(str(error)) from None
    return results


def run_comparison(
    models: DemoModels,
    image: Any,
    prompt_text: Any,
    clip_weight: Any = 0.65,
    stage2_mode: Any = None,
    mask_threshold: Any = 0.5,
    *,
    output_root: str | Path | None = None,
) -> ComparisonView:
    """Segment one image with both models and build every view of the comparison.

    Raises DemoInputError for bad input (message for the user). Downloads are written to a fresh
    ``request-*`` folder under ``output_root`` (default: the system temp dir).
    """
    settings = read_settings(models, clip_weight, stage2_mode, mask_threshold)
    labels = read_request_prompts(models, prompt_text)
    picture = read_image(image, models.limits)
    results = segment_all(models, picture, labels, settings)
    views = {name: model_view(result, picture) for name, result in results.items()}
    differences, agreement = compare_results(labels, results, views)
    folder = request_folder(models.limits.output_max_age_s, output_root)
    downloads = write_downloads(folder, labels, results, {name: view.picked for name, view in views.items()}, settings)
    return ComparisonView(labels, views, differences, agreement, downloads, settings, folder, results, picture)


@dataclass
class PromptChangeView:
    """Both models on one image under two prompt sets: what each picked, and how far its proposals moved."""

    prompt_sets: tuple[list[str], list[str]]
    views: dict[str, tuple[ModelView, ModelView]]  # per model: its view under the first and the second set
    shifts: dict[str, ProposalShift]  # per model: its proposals under the first set vs the second
    settings: dict[str, Any]
    folder: Path
    results: dict[str, tuple[Any, Any]] = field(repr=False, default_factory=dict)
    image: Image.Image | None = field(repr=False, default=None)  # the decoded image both models saw

    def summary_markdown(self) -> str:
        """What to look at in plain words, then the two sets (each model's measure is in its own title)."""
        first, second = (code_list(labels) for labels in self.prompt_sets)
        said = "; ".join(self.shifts[name].sentence(MODEL_TITLES[name]) for name in MODEL_NAMES)
        return (
            f"**What to look at:** only the prompts changed. {said}. Compare each model's two label maps below: "
            f"masks that follow the prompts are PMP's point.\n\n**First set:** {first} · **second set:** {second}"
        )


def run_prompt_change(
    models: DemoModels,
    image: Any,
    first_prompts: Any,
    second_prompts: Any,
    clip_weight: Any = 0.65,
    stage2_mode: Any = None,
    mask_threshold: Any = 0.5,
    *,
    output_root: str | Path | None = None,
) -> PromptChangeView:
    """Run both models on one image with two prompt sets and measure how their proposals moved.

    The baseline's proposals cannot move (its stage 1 never sees the prompts); PMP's can, because every
    decoder layer attends to the prompts' text (Eq. 5). Same checks as :func:`run_comparison`.
    """
    settings = read_settings(models, clip_weight, stage2_mode, mask_threshold)
    sets = (
        read_request_prompts(models, first_prompts, box="Prompts (the first set)"),
        read_request_prompts(models, second_prompts, box="Second prompt set"),
    )
    picture = read_image(image, models.limits)
    # The image's half of both stages once per model; only what the prompts change runs per set.
    with torch.inference_mode():
        states = {name: model.set_image(picture) for name, model in models.items()}
    first, second = (segment_all(models, states, labels, settings) for labels in sets)
    views, shifts, results = {}, {}, {}
    for name in MODEL_NAMES:
        results[name] = (first[name], second[name])
        views[name] = (model_view(first[name], picture), model_view(second[name], picture))
        masks = [result.mask_logits.float().sigmoid().numpy() for result in results[name]]
        shifts[name] = proposal_shift(*masks)  # at mask resolution: a property of the proposals, not the drawing
    return PromptChangeView(
        sets, views, shifts, settings, request_folder(models.limits.output_max_age_s, output_root), results, picture
    )
