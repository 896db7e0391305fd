"""The Gradio adapter of the demo: what each event returns, in the order its components take it.

:mod:`demo.comparison` computes the comparison without knowing Gradio; the functions here turn it (and the
world's scenes and ground truth) into component values and ``gr.Error`` messages. :mod:`demo.layout`
wires them to the page.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from demo.comparison import (
    DIFF_HEADERS,
    MODEL_NAMES,
    MODEL_TITLES,
    TABLE_HEADERS,
    ComparisonView,
    DemoInputError,
    DemoModels,
    ModelView,
    PromptChangeView,
    check_token_limit,
    code_list,
    markdown_safe,
    prompts_markdown,
    read_image,
    read_prompts,
    run_comparison,
    run_prompt_change,
)
from demo.inputs import user_error
from demo.outputs import request_folder
from pmp.config import parse_weight_pair
from pmp.visualize import overlay
from train.world.canvas import IGNORE
from train.world.demo import (
    DEMO_SCENE_SIZE,
    GroundTruth,
    ImageScores,
    check_demo_seed,
    demo_scene,
    ground_truth,
    image_scores,
    prompt_sets,
    unknown_words,
    vocabulary,
)

INTRO = """# What PMP changes: prompt-guided mask proposals, side by side with an OVSeg-style baseline
Both models propose masks (stage 1) and let CLIP name them (stage 2). **PMP's proposals listen to your
prompts; the baseline's never do.** The first tab shows it: the same image under two prompt sets, and how far each
model's proposals moved. On a world scene (**New scene**) the page also shows the ground truth and scores each model.
"""
SCORING = """For each prompt the proposal with the highest **p_out = p^(1-w) · p_hat^w** is picked, where **p** is the
stage-1 probability, **p_hat** CLIP's and w the CLIP weight (0.65, as OVSeg and ODISE weight CLIP)."""
SPLIT_SCORING = """ Prompts the models were not trained to name get their own CLIP weight, {weight} (FC-CLIP's
geometric ensemble; the paper has one weight): the slider sets the weight of the names they were trained on."""


def clip_weight_pair(text: str) -> tuple[float, float]:
    """--clip-weights' type: :func:`pmp.config.parse_weight_pair`, its error as a usage message."""
    try:
        return parse_weight_pair(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def scoring_text(clip_weight_unseen: float | None) -> str:
    """How p_out is computed, with the second weight when the app was started with one."""
    return SCORING if clip_weight_unseen is None else SCORING + SPLIT_SCORING.format(weight=clip_weight_unseen)


UPLOAD_NOTICE = (
    "**No ground truth for your own image.** The bundled models were trained on the synthetic world "
    "only (its {count} words are listed under *Vocabulary*), so on a photo their masks are guesses. To compare "
    "models trained on real data, start the app with them: `python app.py --baseline <folder or Hub id> "
    "--pmp <folder or Hub id>` (see the README, Training at full scale)."
).format(count=sum(map(len, vocabulary().values())))
REAL_UPLOAD_NOTE = "No ground truth for this image: the page has ground truth for world scenes (**New scene**) only."
NOT_THAT_SCENE = "This image is not world scene {seed}. "
TRUTH_NOTE = (
    "**Ground truth of world scene {seed}** under these prompts: each pixel is the finest prompted name of its chain "
    "(part → thing → group, e.g. *wheel → car → vehicle*); pixels no prompt names are left untinted and not scored."
)


# ------------------------------------------------------------------------- the Gradio adapter
# (demo.comparison builds the comparison; these functions turn it into component values and gr.Error)
logger = logging.getLogger(__name__)
STAGE2_DESCRIPTIONS = {"pool": "mask-pooled dense CLIP features", "crop": "OVSeg's masked crops"}
BUSY = "The server is busy writing other visitors' results; try again in a minute."
GENERIC_ERROR = "Something went wrong while segmenting (error id {}). Try another image or fewer prompts."


def crop_views(models: DemoModels, name: str) -> tuple[str, ...]:
    """The crop views (:data:`pmp.config.CROP_VIEWS`) of model ``name``: OVSeg's masked crop unless configured."""
    return tuple(getattr(dict(models.items())[name].config, "crop_views", ("masked",)))


def knows_the_world(models: DemoModels) -> bool:
    """Whether both models are the world's (their CLIP is the bundled tiny CLIP): then the page offers the
    world's vocabulary and flags prompts outside it."""
    return all(
        getattr(getattr(model.config, "clip", None), "model_name", "") == "tiny-clip" for _, model in models.items()
    )


def column_title(
    name: str, stage2_mode: str, scores: ImageScores | None = None, crop_views: tuple[str, ...] = ("masked",)
) -> str:
    """A model column's heading, naming the second stage it ran (in crop mode, with the model's crop
    views), and its scores on a world scene."""
    mode = stage2_mode if stage2_mode in STAGE2_DESCRIPTIONS else "pool"
    description = STAGE2_DESCRIPTIONS[mode]
    if mode == "crop" and "box" in crop_views:
        description += " and their boxes" if "masked" in crop_views else ", read as their boxes"
    title = f"## {MODEL_TITLES[name]}"
    if scores is not None:
        title += f" · mIoU {_pct(scores.miou)} · recall {_pct(scores.recall)}"
    return (
        title
        + f"\nstage 2: **{mode}** ({description})"
        + (f"; scored on this image's {scores.scored} prompt(s) with ground truth" if scores is not None else "")
    )


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.0f}%"


# The order of the values returned by compare_for_ui; app.py wires its output components in this order.
UI_OUTPUTS = (
    "prompts",  # Markdown: the parsed prompts, with the words the bundled models do not know flagged
    "truth", "truth_note",  # the ground truth under these prompts (world scenes), or why there is none
    "baseline_title", "baseline_overlay", "baseline_masks", "baseline_table", "baseline_grid", "baseline_timings",
    "pmp_title", "pmp_overlay", "pmp_masks", "pmp_table", "pmp_grid", "pmp_timings",
    "differences_text", "differences_table",
    "downloads",
    "grids_state",  # per-session: both grid orders per model, for the sort toggle (not part of the API)
)  # fmt: skip
# The order of the values returned by prompt_change_for_ui.
CHANGE_OUTPUTS = (
    "change_summary",
    "baseline_change_title", "baseline_set1", "baseline_set2", "baseline_masks1", "baseline_masks2",
    "pmp_change_title", "pmp_set1", "pmp_set2", "pmp_masks1", "pmp_masks2",
    "truth_set1", "truth_set2", "change_truth_note",
)  # fmt: skip
SCENE_OUTPUTS = ("image", "prompts", "scene_seed", "scene_note", "second_prompts")


def _run(work: Any) -> Any:
    """Run ``work()``; bad input becomes its own gr.Error, anything else is logged and reported generically."""
    try:
        return work()
    except DemoInputError as error:
        raise user_error(str(error)) from None
    except Exception:  # anything else is a bug or a resource problem: log it, tell the user little
        error_id = uuid.uuid4().hex[:8]
        logger.exception("request failed (error id %s)", error_id)
        raise user_error(GENERIC_ERROR.format(error_id)) from None


def read_scene_seed(value: Any) -> int | None:
    """The scene seed of a request, checked (:func:`train.world.demo.check_demo_seed`); None when empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return check_demo_seed(value)
    except ValueError as error:
        raise DemoInputError(str(error)) from None


def check_flag(value: Any, name: str) -> bool:
    """A checkbox's value as the API may send it: true or false (null: the default, true)."""
    if value is None:
        return True
    if not isinstance(value, bool):
        raise DemoInputError(f"{name} must be true or false, got {value!r}")
    return value


@contextlib.contextmanager
def removed_on_error(folder: Path) -> Iterator[None]:
    """Remove ``folder`` (a request's outputs) when the block fails: a refused request leaves nothing."""
    try:
        yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def scene_truths(
    models: DemoModels, scene_seed: Any, image: Any, *label_sets: list[str]
) -> list[tuple[GroundTruth | None, str]]:
    """The ground truth of a world scene under each prompt set, or None and a note saying why there is none.

    The seed is checked, and so is the image: ground truth is given only when the image is that scene's
    picture pixel for pixel, so a seed left over from an earlier scene never scores another image. The
    scene is drawn and compared once, whatever the number of prompt sets.
    """
    upload_note = UPLOAD_NOTICE if knows_the_world(models) else REAL_UPLOAD_NOTE
    seed = read_scene_seed(scene_seed)
    if seed is None:
        return [(None, upload_note)] * len(label_sets)
    scene = demo_scene(seed)
    pixels = np.asarray(image.convert("RGB")) if image is not None else None
    if pixels is None or pixels.shape != scene.image.shape or not np.array_equal(pixels, scene.image):
        return [(None, NOT_THAT_SCENE.format(seed=seed) + upload_note)] * len(label_sets)
    truths = []
    for labels in label_sets:
        truth = ground_truth(scene, labels)
        note = TRUTH_NOTE.format(seed=seed)
        if truth.outside_world:
            note += f" {code_list(truth.outside_world)}: no world name, so no pixel is theirs."
        truths.append((truth, note))
    return truths


def truth_picture(truth: GroundTruth, image: Any) -> Any:
    """The ground truth drawn as the models' label maps are: the same colours, the same legend."""
    semantic = np.where(truth.target == IGNORE, -1, truth.target.astype(np.int64))
    return overlay(image, semantic, truth.prompts)


def compare_for_ui(
    models: DemoModels,
    image: Any,
    prompt_text: Any,
    clip_weight: Any,
    stage2_mode: Any,
    mask_threshold: Any,
    sort_by_score: Any = True,
    scene_seed: Any = None,
    *,
    output_root: str | Path | None = None,
) -> tuple:
    """The app's (and the ``/compare`` API's) handler: values in UI_OUTPUTS order, or gr.Error.

    Pictures are returned as PNG paths in the request's own folder, not as PIL images: Gradio
    re-writes a PIL output in place at a path named by its content hash, so two concurrent requests
    with identical outputs (two users running the same example) could serve each other a half-written
    file. A path is copied into Gradio's cache atomically instead.
    """

    def work() -> tuple:
        read_scene_seed(scene_seed)  # checked before any work, so that a bad seed writes nothing
        sorted_by_score = check_flag(sort_by_score, "sort by score")
        view = run_comparison(
            models, image, prompt_text, clip_weight, stage2_mode, mask_threshold, output_root=output_root
        )
        with removed_on_error(view.folder):
            [(truth, note)] = scene_truths(models, scene_seed, view.image, view.labels)
            return view, write_pictures(view), truth, note, sorted_by_score

    view, pictures, truth, note, sorted_by_score = _run(work)
    slot = 0 if sorted_by_score else 1
    truth_path = None
    if truth is not None:
        truth_path = str(view.folder / "ground_truth.png")
        truth_picture(truth, view.image).save(truth_path)
    values: list[Any] = [prompts_with_flags(models, view.labels), truth_path, note]
    for name in MODEL_NAMES:
        column, files, result = view.views[name], pictures[name], view.results[name]
        scores = image_scores(truth, result.semantic, result.proposals) if truth is not None else None
        values += [
            column_title(name, view.settings["stage2_mode"], scores, crop_views(models, name)),
            files["overlay"],
            [(path, caption) for path, (_, caption) in zip(files["masks"], column.masks)],
            {"headers": TABLE_HEADERS, "data": column.table},
            files["grids"][slot],
            column.timings_markdown(),
        ]
    values += [
        view.differences_markdown(),
        {"headers": DIFF_HEADERS, "data": view.differences},
        [str(path) for path in view.downloads],
        {name: pictures[name]["grids"] for name in MODEL_NAMES},
    ]
    return tuple(values)


def prompt_change_for_ui(
    models: DemoModels,
    image: Any,
    first_prompts: Any,
    second_prompts: Any,
    clip_weight: Any,
    stage2_mode: Any,
    mask_threshold: Any,
    scene_seed: Any = None,
    *,
    output_root: str | Path | None = None,
) -> tuple:
    """The prompt-change view's (and the ``/prompt_change`` API's) handler: values in CHANGE_OUTPUTS order."""

    def work() -> tuple:
        read_scene_seed(scene_seed)  # checked before any work, so that a bad seed writes nothing
        view = run_prompt_change(
            models, image, first_prompts, second_prompts, clip_weight, stage2_mode, mask_threshold,
            output_root=output_root,
        )  # fmt: skip
        with removed_on_error(view.folder):
            truths = scene_truths(models, scene_seed, view.image, *view.prompt_sets)
            return view, write_prompt_change_pictures(view), truths

    view, pictures, truths = _run(work)
    values: list[Any] = [view.summary_markdown()]
    for name in MODEL_NAMES:
        title = f"### {MODEL_TITLES[name]}\n{view.shifts[name].markdown()}"
        if truths[0][0] is not None:
            scores = [
                image_scores(truth, result.semantic, result.proposals)
                for (truth, _), result in zip(truths, view.results[name])
            ]
            title += (
                f"\n\nmIoU on this image: {_pct(scores[0].miou)} (first set) → {_pct(scores[1].miou)} (second set); "
                f"recall {_pct(scores[0].recall)} → {_pct(scores[1].recall)}"
            )
        values.append(title)
        values += [pictures[name][k]["overlay"] for k in (0, 1)]
        for k in (0, 1):
            values.append(
                [(path, caption) for path, (_, caption) in zip(pictures[name][k]["masks"], view.views[name][k].masks)]
            )
    truth_paths: list[Any] = []
    for k, (truth, _) in enumerate(truths):
        if truth is None:
            truth_paths.append(None)
            continue
        truth_paths.append(str(view.folder / f"ground_truth_set{k + 1}.png"))
        truth_picture(truth, view.image).save(truth_paths[-1])
    return tuple(values + truth_paths + [truths[1][1]])


def scene_png(seed: int, scene: Any, folder: Path) -> str:
    """Save demo scene ``seed``'s picture in ``folder`` (once: written under a unique name, then renamed, so
    a concurrent request never sees half a file); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scene-{seed}.png"
    if not path.is_file():
        partial = folder / f".scene-{seed}-{uuid.uuid4().hex}.png"
        Image.fromarray(scene.image).save(partial)
        os.replace(partial, path)
    return str(path)


def scene_for_ui(models: DemoModels, scene_seed: Any, *, output_root: str | Path) -> tuple:
    """The ``/render_scene`` API and the New scene button: a world scene (a random one when ``scene_seed``
    is empty), its two prompt sets (its things whole, and by their parts), its seed and a note; values in
    SCENE_OUTPUTS order. The picture goes into
    a request folder of its own, pruned by age like every other output."""
    if scene_seed is None or (isinstance(scene_seed, str) and not scene_seed.strip()):
        scene_seed = int(np.random.default_rng().integers(0, 1_000_000))
    try:
        seed = check_demo_seed(scene_seed)
    except ValueError as error:
        raise user_error(str(error)) from None
    scene = demo_scene(seed)
    path = scene_png(seed, scene, request_folder(models.limits.output_max_age_s, output_root))
    note = (
        f"World scene **{seed}** ({DEMO_SCENE_SIZE} px; share it by its seed). The first prompt set names its things "
        "whole, the second by their parts: press **Compare the two sets** (or **Run** for the first set alone) to "
        "see the ground truth and the scores."
    )
    sets = prompt_sets(scene)
    return path, ", ".join(sets["wholes"]), seed, note, ", ".join(sets["parts"])


def checked_upload(models: DemoModels, path: str) -> tuple:
    """An upload read at once, not at the next Run: a file that is not an image (or is too large) is removed
    from the image box with a message saying what is accepted. ``path``: a file of the upload cache (the
    caller checked it with demo.inputs.uploaded_path). Values for (image, scene seed, scene note)."""
    try:
        read_image(path, models.limits)
    except DemoInputError as error:
        Path(path).unlink(missing_ok=True)  # an upload of this app: of no use now
        gr.Warning(str(error))
        return None, None, ""
    return gr.update(), None, ""


def cleared_results(count: int) -> tuple:
    """After a new image: every result of the previous one emptied, so that none is read as this image's."""
    return (None,) * count


def prompts_with_flags(models: DemoModels, labels: list[str]) -> str:
    """The parsed prompts, and (for the world's models) a line for each prompt with words they never read."""
    text = prompts_markdown(labels)
    if not knows_the_world(models):
        return text
    flags = []
    for label in labels:
        words = unknown_words(label)
        if words:
            what = ", ".join(f"*{markdown_safe(word)}*" for word in words)
            flags.append(
                f"- ⚠ `{markdown_safe(label)}`: not in the bundled models' vocabulary ({what}); its mask is a guess"
            )
    return text + ("\n\n" + "\n".join(flags) if flags else "")


def preview_prompts(models: DemoModels, text: Any) -> str:
    """Live feedback while typing: the prompts the Run button will use, or why there are none."""
    if isinstance(text, (list, tuple)):
        text = ", ".join(map(str, text))
    if not isinstance(text, str) or not text.strip():
        return "*Type class names separated by commas (sky, house, red car) or a caption.*"
    try:
        prompts = read_prompts(text, models.effective_limits())
        check_token_limit(models, prompts)
    except DemoInputError as error:
        return f"**Cannot use these prompts:** {html.escape(str(error), quote=False)}"
    return prompts_with_flags(models, prompts)


def add_word(text: Any, word: str) -> str:
    """A vocabulary click: ``word`` appended to the prompt box (once; the box keeps what was typed)."""
    current = text if isinstance(text, str) else ""
    names = [part.strip() for part in current.split(",") if part.strip()]
    if word in names:
        return current
    return ", ".join(names + [word]) if names else word


def vocabulary_samples() -> dict[str, tuple[list[str], list[str]]]:
    """Per granularity: (the names, their labels in the panel), unseen names marked."""
    return {
        level: ([name for name, _ in entries], [name if seen else f"{name} (unseen)" for name, seen in entries])
        for level, entries in vocabulary().items()
    }


def pick_grids(grids: Any, sort_by_score: Any) -> tuple:
    """The sort toggle: re-show the saved grids in the other order without running the models again.

    ``grids`` is the per-session state {model: (by score path, by index path)}; when there is none
    yet, or its request folder has been pruned, the grids shown are left as they are.
    """
    slot = 0 if sort_by_score else 1
    if not isinstance(grids, dict) or not all(name in grids for name in MODEL_NAMES):
        return (gr.skip(), gr.skip())
    paths = [grids[name][slot] for name in MODEL_NAMES]
    if not all(isinstance(path, str) and Path(path).is_file() for path in paths):
        return (gr.skip(), gr.skip())
    return tuple(paths)


def save_column_pictures(folder: Path, column: ModelView, prefix: str, *, grids: bool = True) -> dict[str, Any]:
    """Save one column's pictures as ``<prefix>_*.png`` in ``folder``: overlay, picked masks, grids."""

    def save(picture: Image.Image, stem: str) -> str:
        path = folder / f"{prefix}_{stem}.png"
        picture.save(path, compress_level=1)  # speed over size: these are served once
        return str(path)

    pictures: dict[str, Any] = {
        "overlay": save(column.overlay, "overlay"),
        "masks": [save(picture, f"picked_{k:02d}") for k, (picture, _) in enumerate(column.masks)],
    }
    if grids:
        pictures["grids"] = (
            save(column.grid_by_score, "proposals_by_score"),
            save(column.grid_by_index, "proposals_by_index"),
        )
    return pictures


def write_pictures(view: ComparisonView) -> dict[str, dict[str, Any]]:
    """Save every picture of ``view`` as PNG in its request folder; per model: overlay, masks, grids."""
    return {name: save_column_pictures(view.folder, column, name) for name, column in view.views.items()}


def write_prompt_change_pictures(view: PromptChangeView) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Per model, the overlay and picked masks under the first and the second prompt set, as PNG files."""
    return {
        name: tuple(
            save_column_pictures(view.folder, column, f"{name}_set{k + 1}", grids=False)
            for k, column in enumerate(columns)
        )
        for name, columns in view.views.items()
    }
