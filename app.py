"""Gradio demo: the OVSeg-style baseline and PMP side by side on one image and one prompt list.

    python app.py                                  # bundled checkpoints/baseline and checkpoints/pmp
    python app.py --baseline user/ovseg --pmp ./my-pmp --host 0.0.0.0 --port 7860

This file lays out the components, wires the events and holds the Gradio adapter (component values,
``gr.Error``, the server's request limits); the comparison itself (input checks, both models, the
pictures, the downloads) is in :mod:`pmp.demo`, which does not know Gradio. The comparison is also an HTTP API named
``/compare`` (see the README): every input is checked in the handler, not in the UI.
"""

from __future__ import annotations

import os

# Before gradio is imported: no telemetry, no version check, nothing leaves the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Before torch is imported: idle OpenMP threads sleep instead of spinning, so concurrent requests
# (or other processes) on a small CPU do not starve each other (measured: 2.8 s instead of 30 ms).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import html  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from demo.inputs import as_sent, clear_input_errors, guarded_image, list_prompts, user_error  # noqa: E402
from demo.server import (  # noqa: E402
    IDLE_TRIM_S,
    MAX_REQUEST_BYTES,
    DiskBudget,
    IdleTrim,
    RequestBodyLimit,
    UploadGuard,
    instance_folders,
    remove_on_exit,
)
from pmp.allocator import retain_freed_memory  # noqa: E402
from pmp.config import AUTOCAST_NAMES, parse_weight_pair  # noqa: E402
from pmp.demo import (  # noqa: E402
    DIFF_HEADERS,
    MODEL_NAMES,
    MODEL_TITLES,
    STAGE2_MODES,
    TABLE_HEADERS,
    DemoInputError,
    DemoModels,
    check_token_limit,
    code_list,
    markdown_safe,
    prompts_markdown,
    read_prompts,
    request_folder,
    run_comparison,
    run_prompt_change,
    write_pictures,
    write_prompt_change_pictures,
)
from pmp.images import IMAGE_SUFFIXES  # noqa: E402
from pmp.visualize import overlay  # noqa: E402
from train.world.canvas import IGNORE  # noqa: E402
from train.world.demo import (  # noqa: E402
    DEMO_SCENE_SIZE,
    GroundTruth,
    ImageScores,
    check_demo_seed,
    demo_scene,
    ground_truth,
    image_scores,
    scene_prompts,
    unknown_words,
    vocabulary,
)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
MAX_FILE_SIZE = "25mb"  # uploads above this are refused by Gradio before they reach the handler
DEFAULT_QUEUE_SIZE = 16
INTRO = """# What PMP changes: prompt-guided mask proposals, side by side with an OVSeg-style baseline
Both models propose masks (stage 1) and let CLIP name them (stage 2). **PMP's proposals listen to your
prompts; the baseline's never do.** The first tab shows it: the same image under two prompt sets, and how far each
model's proposals moved. On a world scene (**New scene**) the page also shows the ground truth and scores each model.
"""
SCORING = """For each prompt the proposal with the highest **p_out = p^(1-w) · p_hat^w** is picked, where **p** is the
stage-1 probability, **p_hat** CLIP's and w the CLIP weight (0.65, as OVSeg and ODISE weight CLIP; Eq. 3 writes
λ = 1 - w)."""
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
# (pmp.demo builds the comparison; these functions turn it into component values and gr.Error)
logger = logging.getLogger("app")
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
SCENE_OUTPUTS = ("image", "prompts", "scene_seed", "scene_note")


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
    is empty), its prompt set, its seed and a note; values in SCENE_OUTPUTS order. The picture goes into
    a request folder of its own, pruned by age like every other output."""
    if scene_seed is None or (isinstance(scene_seed, str) and not scene_seed.strip()):
        scene_seed = int(np.random.default_rng().integers(0, 1_000_000))
    try:
        seed = check_demo_seed(scene_seed)
    except ValueError as error:
        raise user_error(str(error)) from None
    scene = demo_scene(seed)
    path = scene_png(seed, scene, request_folder(models, output_root))
    note = (
        f"World scene **{seed}** ({DEMO_SCENE_SIZE} px; share it by its seed). Its prompts name each thing as "
        "itself, by its parts, or by its group: press **Run** or **Compare the two sets** to see the ground truth "
        "and the scores."
    )
    return path, ", ".join(scene_prompts(scene)), seed, note


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


@dataclass(frozen=True)
class Example:
    """One row of the page's examples: a world scene (``seed``) or an image file, with its prompts."""

    image: str
    prompts: str
    seed: int | None = None
    second_prompts: str = ""
    caption: str = ""

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


def _prompt_box(models: DemoModels, label: str, placeholder: str, elem_id: str, **options: Any) -> gr.Textbox:
    """A prompt text box that also takes a list of strings through the API, bounded in length."""
    return list_prompts(
        gr.Textbox(
            label=label,
            max_length=models.limits.max_text_chars,
            placeholder=placeholder,
            elem_id=elem_id,
            **options,
        )
    )


def _picture(label: str, elem_id: str, **options: Any) -> gr.Image:
    """A read-only picture the handlers fill with PNG paths (label maps, grids, ground truth)."""
    return gr.Image(label=label, type="pil", format="png", interactive=False, elem_id=elem_id, **options)


def _model_column(
    name: str, columns: dict[str, dict[str, Any]], stage2_mode: str, views: tuple[str, ...] = ("masked",)
) -> None:
    """One model's column of the detail tab: title with its scores, label map, picked masks, table, grid."""
    short = "PMP" if name == "pmp" else "Baseline"
    col = columns[name] = {}
    col["title"] = gr.Markdown(column_title(name, stage2_mode, crop_views=views), elem_id=f"{name}-title")
    col["overlay"] = _picture(f"{short}: label map", f"{name}-overlay")
    col["timings"] = gr.Markdown(label=f"{short} timings", elem_id=f"{name}-timings")
    col["masks"] = gr.Gallery(
        label=f"{short}: picked proposal per prompt (prompt · proposal # · p · p_hat · p_out)",
        columns=2,
        height=360,
        object_fit="contain",
        elem_id=f"{name}-masks",
    )
    col["table"] = gr.Dataframe(
        headers=TABLE_HEADERS,
        label=f"{short}: scores of the picked proposals",
        interactive=False,
        wrap=True,
        elem_id=f"{name}-table",
    )
    col["grid"] = _picture(f"{short}: every proposal (# · best label · p_out)", f"{name}-grid", height=520)


CSS = """
#parsed-prompts { min-height: 2em; }
.vocabulary button { font-size: 0.85em; }
@media (max-width: 640px) { .gradio-container { padding: 4px !important; } }
"""


def build_app(
    models: DemoModels,
    *,
    output_root: str | Path,
    examples: list[Example] | None = None,
    budget: DiskBudget | None = None,
    idle_trim: IdleTrim | None = None,
) -> gr.Blocks:
    """The Blocks UI; queue limits are applied by :func:`launch`. With ``budget``, a request runs only when
    the disk budget has room for what it writes; with ``idle_trim``, memory is returned once requests stop."""
    output_root = Path(output_root)
    examples = read_examples(scenes=output_root) if examples is None else examples
    world = knows_the_world(models)
    opening_stage2 = models.stage2_mode()  # the models' own: the radio's default, the titles, the first view
    columns: dict[str, dict[str, Any]] = {}
    change: dict[str, Any] = {}
    with gr.Blocks(title="PMP vs OVSeg-style baseline", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                # image_mode=None: the handler gets the file as uploaded (16-bit, RGBA, ...), not Gradio's RGB copy
                image = guarded_image(
                    gr.Image(
                        label="Image",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        height=320,
                        elem_id="image",
                    ),
                    models.limits.max_pixels,
                )
                with gr.Row():
                    scene_seed = as_sent(
                        gr.Number(
                            label="World scene seed (empty: your own image)",
                            precision=0,
                            minimum=0,
                            maximum=999_999_999,
                            elem_id="scene-seed",
                            scale=2,
                        )
                    )
                    new_scene = gr.Button("New scene", elem_id="new-scene", scale=1)
                scene_note = gr.Markdown(elem_id="scene-note")
                prompts = _prompt_box(models, "Prompts (the first set)", "sky, house, red car", "prompts", lines=2)
                parsed = gr.Markdown(preview_prompts(models, ""), label="Parsed prompts", elem_id="parsed-prompts")
                if world:
                    with gr.Accordion(
                        "Vocabulary of the bundled models: click a word to add it", open=False, elem_id="vocabulary"
                    ):
                        gr.Markdown(
                            "Every word the bundled models know. *(unseen)*: never labelled in segmentation "
                            "training, known only through CLIP's text."
                        )
                        for level, (names, labels) in vocabulary_samples().items():
                            words = gr.Dataset(
                                components=["textbox"],
                                samples=[[label] for label in labels],
                                label={"stuff": "stuff", "thing": "things", "part": "parts", "group": "groups"}[level],
                                type="index",
                                samples_per_page=len(labels),
                                layout="gallery",
                                elem_id=f"vocabulary-{level}",
                                elem_classes="vocabulary",
                            )

                            def add(index: Any, text: Any, names: list[str] = names) -> str:
                                if not isinstance(index, int) or not 0 <= index < len(names):
                                    return text if isinstance(text, str) else ""
                                return add_word(text, names[index])

                            words.click(add, inputs=[words, prompts], outputs=prompts, api_visibility="private")
                with gr.Accordion("Settings", open=False):
                    opening_weight, unseen_weight = models.clip_weights()
                    gr.Markdown(scoring_text(unseen_weight))
                    clip_weight = as_sent(
                        gr.Slider(
                            0.0,
                            1.0,
                            value=opening_weight,
                            step=0.05,
                            label="CLIP weight w: p_out = p^(1-w) · p_hat^w (Eq. 3's λ = 1 - w)",
                            elem_id="clip-weight",
                        )
                    )
                    stage2_mode = as_sent(
                        gr.Radio(
                            list(STAGE2_MODES),
                            value=opening_stage2,
                            label="Stage 2",
                            info="pool: mask-pooled dense CLIP features; crop: OVSeg's masked crops, "
                            "with their boxes where a model's crop_views say so (the column titles name them)",
                        )
                    )
                    mask_threshold = as_sent(gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Mask threshold"))
                    sort_by_score = as_sent(gr.Checkbox(value=True, label="Sort proposals by score"))
                world_examples = [example for example in examples if example.seed is not None]
                photo_examples = [example for example in examples if example.seed is None]
            with gr.Column(scale=2, min_width=320):
                with gr.Tabs(elem_id="views"):
                    with gr.Tab("What changes with the prompts", id="change", elem_id="tab-change"):
                        with gr.Row():
                            second = _prompt_box(
                                models,
                                "Second prompt set (the first is the Prompts box)",
                                "car, wheel, window",
                                "second-prompts",
                                scale=3,
                            )
                            run_change = gr.Button(
                                "Compare the two sets", variant="primary", elem_id="run-change", scale=1
                            )
                        change["change_summary"] = gr.Markdown(elem_id="change-summary")
                        for name in MODEL_NAMES:
                            short = "PMP" if name == "pmp" else "Baseline"
                            change[f"{name}_change_title"] = gr.Markdown(
                                f"### {MODEL_TITLES[name]}", elem_id=f"{name}-change-title"
                            )
                            with gr.Row():
                                for k in (1, 2):
                                    with gr.Column(min_width=240):
                                        change[f"{name}_set{k}"] = _picture(
                                            f"{short}, {'first' if k == 1 else 'second'} set: label map",
                                            f"{name}-set{k}",
                                        )
                                        change[f"{name}_masks{k}"] = gr.Gallery(
                                            label=f"{short}, {'first' if k == 1 else 'second'} set: picked proposals",
                                            columns=2,
                                            height=260,
                                            object_fit="contain",
                                            elem_id=f"{name}-masks{k}",
                                        )
                        gr.Markdown("### Ground truth under each set")
                        change["change_truth_note"] = gr.Markdown(elem_id="change-truth-note")
                        with gr.Row():
                            for k in (1, 2):
                                change[f"truth_set{k}"] = _picture(
                                    f"Ground truth, {'first' if k == 1 else 'second'} set",
                                    f"truth-set{k}",
                                    min_width=240,
                                )
                    with gr.Tab("One prompt set in detail", id="detail", elem_id="tab-detail"):
                        run = gr.Button("Run", variant="primary", elem_id="run")
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=1, min_width=240):
                                truth = _picture("Ground truth under these prompts", "truth", height=300)
                            with gr.Column(scale=2, min_width=240):
                                gr.Markdown("## Ground truth")
                                truth_note = gr.Markdown(elem_id="truth-note")
                        with gr.Row(equal_height=False):
                            for name in MODEL_NAMES:
                                with gr.Column(min_width=280, elem_id=f"column-{name}"):
                                    _model_column(name, columns, opening_stage2, crop_views(models, name))
                        with gr.Row():
                            with gr.Column(min_width=300):
                                gr.Markdown("## Where the two differ")
                                differences_text = gr.Markdown(label="Differences", elem_id="differences")
                                differences_table = gr.Dataframe(
                                    headers=DIFF_HEADERS,
                                    label="Picked masks per prompt: IoU between the models",
                                    interactive=False,
                                    elem_id="differences-table",
                                )
                            with gr.Column(min_width=300):
                                gr.Markdown(
                                    "## Downloads\nLabel maps: 8-bit PNG, pixel = prompt index, 255 = no label. "
                                    "`masks.zip`: per model and prompt, the picked proposal and the label's region. "
                                    "`scores.json`: p, p_hat and p_out of every proposal."
                                )
                                downloads = gr.File(
                                    label="Downloads", file_count="multiple", interactive=False, elem_id="downloads"
                                )
        example_inputs = [image, prompts, scene_seed, second]
        if world_examples:
            gr.Examples(
                examples=[example.row() for example in world_examples],
                inputs=example_inputs,
                example_labels=[example.caption or example.prompts for example in world_examples],
                cache_examples=False,
                label="World scenes where the two models differ (measured): pick one, then compare",
                elem_id="world-examples",
            )
        if photo_examples:
            gr.Examples(
                examples=[example.row() for example in photo_examples],
                inputs=example_inputs,
                cache_examples=False,
                label="Outside the bundled world: photos (the bundled models have never seen one)",
                elem_id="photo-examples",
            )
        grids_state = gr.State(None, time_to_live=int(models.limits.output_max_age_s))  # paths into the request folder

        components = {
            "prompts": parsed,
            "truth": truth,
            "truth_note": truth_note,
            "differences_text": differences_text,
            "differences_table": differences_table,
            "downloads": downloads,
            "grids_state": grids_state,
        }
        for name in MODEL_NAMES:
            for part in ("title", "overlay", "masks", "table", "grid", "timings"):
                components[f"{name}_{part}"] = columns[name][part]

        def check_room() -> None:
            """Before any work: the disk budget must have room for what a request writes."""
            if budget is not None and not budget.make_room(MAX_REQUEST_BYTES):
                raise user_error(BUSY)

        def counted(handler: Callable[..., Any]) -> Callable[..., Any]:
            """``handler`` as one request of ``idle_trim`` (unchanged without it)."""
            if idle_trim is None:
                return handler

            @functools.wraps(handler)
            def run(*args: Any) -> Any:
                with idle_trim.request():
                    return handler(*args)

            return run

        def compare(image, prompts, clip_weight, stage2_mode, mask_threshold, sort_by_score, scene_seed=None):
            """Segment the image with both models; returns the views in UI_OUTPUTS order."""
            check_room()
            return compare_for_ui(
                models, image, prompts, clip_weight, stage2_mode, mask_threshold, sort_by_score, scene_seed,
                output_root=output_root,
            )  # fmt: skip

        def prompt_change(image, prompts, second_prompts, clip_weight, stage2_mode, mask_threshold, scene_seed=None):
            """Both models under two prompt sets; returns the views in CHANGE_OUTPUTS order."""
            check_room()
            return prompt_change_for_ui(
                models, image, prompts, second_prompts, clip_weight, stage2_mode, mask_threshold, scene_seed,
                output_root=output_root,
            )  # fmt: skip

        def render_scene(scene_seed):
            """A world scene and its prompt set; returns the image, the prompts, the seed and a note."""
            check_room()
            return scene_for_ui(models, scene_seed, output_root=output_root)

        def new_random_scene():
            check_room()
            return scene_for_ui(models, None, output_root=output_root)

        def show_prompts(text):
            return preview_prompts(models, text)

        inputs = [image, prompts, clip_weight, stage2_mode, mask_threshold, sort_by_score, scene_seed]
        run.click(counted(compare), inputs=inputs, outputs=[components[key] for key in UI_OUTPUTS], api_name="compare")
        change_inputs = [image, prompts, second, clip_weight, stage2_mode, mask_threshold, scene_seed]
        change_outputs = [change[key] for key in CHANGE_OUTPUTS]
        run_change.click(counted(prompt_change), inputs=change_inputs, outputs=change_outputs, api_name="prompt_change")
        scene_outputs = [image, prompts, scene_seed, scene_note]
        new_scene.click(new_random_scene, outputs=scene_outputs, api_visibility="private")
        scene_seed.submit(render_scene, inputs=scene_seed, outputs=scene_outputs, api_name="render_scene")
        image.upload(
            lambda: (None, ""), outputs=[scene_seed, scene_note], api_visibility="private", show_progress="hidden"
        )
        if world_examples:  # on load: the first example, already compared under its two prompt sets
            first = world_examples[0]

            def first_view():
                check_room()
                values = prompt_change_for_ui(
                    models, first.image, first.prompts, first.second_prompts, 0.65, opening_stage2, 0.5, first.seed,
                    output_root=output_root,
                )  # fmt: skip
                note = f"**Opening example**, world scene {first.seed}: {first.caption or 'two prompt sets'}."
                return (first.image, first.prompts, first.seed, first.second_prompts, note, *values)

            demo.load(
                counted(first_view),
                outputs=[image, prompts, scene_seed, second, scene_note, *change_outputs],
                api_visibility="private",
                show_progress="hidden",
            )
        prompts.change(
            show_prompts,
            inputs=prompts,
            outputs=parsed,
            api_visibility="private",
            trigger_mode="always_last",
            show_progress="hidden",
            concurrency_limit=4,
        )
        sort_by_score.change(
            pick_grids,
            inputs=[grids_state, sort_by_score],
            outputs=[columns["baseline"]["grid"], columns["pmp"]["grid"]],
            api_visibility="private",
            show_progress="hidden",
            concurrency_limit=4,
        )
    return clear_input_errors(demo)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gradio demo comparing the OVSeg-style baseline with PMP.")
    parser.add_argument(
        "--baseline",
        default=None,
        help="baseline checkpoint: bundled name, local folder or Hub id (default: bundled baseline)",
    )
    parser.add_argument(
        "--pmp", default=None, help="PMP checkpoint: bundled name, local folder or Hub id (default: bundled pmp)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--concurrency", type=int, default=1, help="comparisons run at once (each runs both models)")
    parser.add_argument(
        "--max-queue", type=int, default=DEFAULT_QUEUE_SIZE, help="waiting requests beyond this are refused"
    )
    parser.add_argument(
        "--autocast",
        choices=AUTOCAST_NAMES,
        default="none",
        help="run both models under torch.autocast (bfloat16: about 1.2x faster on CPUs with AVX-512 BF16)",
    )
    parser.add_argument(
        "--clip-weights",
        type=clip_weight_pair,
        default=None,
        metavar="W:U",
        help="Eq. 3 with FC-CLIP's two weights: W for prompts among the models' training names (the slider opens "
        "at it), U for the others, e.g. 0.4:0.9 (default: one weight, the paper's Eq. 3)",
    )
    parser.add_argument(
        "--idle-trim-s",
        type=float,
        default=IDLE_TRIM_S,
        help="return freed memory to the system after this many seconds without a request (0: never; "
        "docs/demo.md, Memory)",
    )
    return parser.parse_args(argv)


def launch(
    demo: gr.Blocks,
    *,
    host: str,
    port: int,
    concurrency: int,
    max_queue: int,
    block: bool = True,
    budget: DiskBudget | None = None,
) -> gr.Blocks:
    """Bounded queue, bounded request bodies and uploads, no share link, no SSR (which needs Node), API docs
    kept. Uploads are refused when ``budget`` has no room for them."""
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=MAX_FILE_SIZE,
        ssr_mode=False,
        css=CSS,
        show_error=False,  # only our own gr.Error messages reach users
        prevent_thread_lock=not block,
        quiet=not block,
        footer_links=["api", "gradio"],
        app_kwargs={"middleware": [Middleware(RequestBodyLimit), Middleware(UploadGuard, budget=budget)]},
    )
    return demo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    retain_freed_memory()  # stage 2's crop tower reuses its activations' memory (pmp.allocator)
    try:
        models = DemoModels.load(
            args.baseline, args.pmp, device=args.device, autocast=args.autocast, clip_weights=args.clip_weights
        )
    except ValueError as error:  # e.g. --clip-weights for a model whose config lists no training names
        raise SystemExit(f"app.py: error: {error}") from None
    output_root = instance_folders()  # also Gradio's cache, so that every file of the instance is in it
    remove_on_exit(output_root)
    budget = DiskBudget(output_root)
    idle_trim = IdleTrim(args.idle_trim_s) if args.idle_trim_s > 0 else None
    demo = build_app(models, output_root=output_root, budget=budget, idle_trim=idle_trim)
    budget.protect_existing()  # the examples Gradio cached while the page was built
    launch(demo, host=args.host, port=args.port, concurrency=args.concurrency, max_queue=args.max_queue, budget=budget)


if __name__ == "__main__":
    main()
