"""The demo's page: components, their layout, and the events wired to :mod:`demo.handlers`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from demo.comparison import (
    DIFF_HEADERS,
    MODEL_NAMES,
    MODEL_TITLES,
    STAGE2_MODES,
    TABLE_HEADERS,
    DemoModels,
)
from demo.examples import Example, read_examples
from demo.gpu import on_gpu
from demo.handlers import (
    BUSY,
    CHANGE_OUTPUTS,
    INTRO,
    UI_OUTPUTS,
    add_word,
    checked_upload,
    cleared_results,
    column_title,
    compare_for_ui,
    crop_views,
    knows_the_world,
    pick_grids,
    preview_prompts,
    prompt_change_for_ui,
    scene_for_ui,
    scoring_text,
    vocabulary_samples,
)
from demo.inputs import as_sent, clear_input_errors, guarded_image, list_prompts, uploaded_path, user_error
from demo.server import (
    MAX_REQUEST_BYTES,
    DiskBudget,
    IdleTrim,
)


def _prompt_box(models: DemoModels, label: str, placeholder: str, elem_id: str, **options: Any) -> gr.Textbox:
    """A prompt text box that also takes a list of strings through the API. Not cut in the browser (a cut
    paste would be read as something else): the handler refuses text over the limit with its real length,
    and the server bounds every request body."""
    return list_prompts(
        gr.Textbox(
            label=label,
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
    col["title"] = gr.Markdown(
        column_title(name, stage2_mode, crop_views=views), label=f"{short} summary", elem_id=f"{name}-title"
    )
    col["overlay"] = _picture(f"{short} label map", f"{name}-overlay")
    col["timings"] = gr.Markdown(label=f"{short} timings", elem_id=f"{name}-timings")
    col["masks"] = gr.Gallery(
        label=f"{short} picked masks",
        columns=2,
        height="auto",
        object_fit="contain",
        elem_id=f"{name}-masks",
    )
    col["table"] = gr.Dataframe(
        headers=TABLE_HEADERS,
        label=f"{short} scores",
        interactive=False,
        wrap=True,
        column_widths=TABLE_WIDTHS,  # shares of the column: every column in view at phone width too
        elem_id=f"{name}-table",
    )
    col["grid"] = _picture(f"{short} proposals", f"{name}-grid", height=520)


TABLE_WIDTHS = ["24%", "14%", "14%", "16%", "16%", "16%"]  # the six columns of TABLE_HEADERS and DIFF_HEADERS

CSS = """
#parsed-prompts { min-height: 2em; }
.vocabulary button { font-size: 0.85em; }
.caption-label { white-space: normal !important; max-width: 100% !important; }
@media (max-width: 640px) {
  .gradio-container { padding: 4px !important; }
  .table-wrap table { font-size: 0.75em; }
}
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
                scene_note = gr.Markdown(label="Scene note", elem_id="scene-note")
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
                            label="CLIP weight w: p_out = p^(1-w) · p_hat^w",
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
                    with gr.Tab("Two prompt sets", id="change", elem_id="tab-change"):
                        with gr.Row():
                            second = _prompt_box(
                                models,
                                "Second prompt set",
                                "car, wheel, window",
                                "second-prompts",
                                scale=3,
                            )
                            run_change = gr.Button(
                                "Compare the two sets", variant="primary", elem_id="run-change", scale=1
                            )
                        change["change_summary"] = gr.Markdown(label="Summary", elem_id="change-summary")
                        for name in MODEL_NAMES:
                            short = "PMP" if name == "pmp" else "Baseline"
                            change[f"{name}_change_title"] = gr.Markdown(
                                f"### {MODEL_TITLES[name]}", label=f"{short} summary", elem_id=f"{name}-change-title"
                            )
                            with gr.Row():
                                for k in (1, 2):
                                    change[f"{name}_set{k}"] = _picture(
                                        f"{short} label map, {'first' if k == 1 else 'second'} set",
                                        f"{name}-set{k}",
                                        min_width=240,
                                    )
                            with gr.Accordion(f"{short}: the mask picked for each prompt", open=False):
                                with gr.Row():
                                    for k in (1, 2):
                                        change[f"{name}_masks{k}"] = gr.Gallery(
                                            label=f"{short} picked masks, {'first' if k == 1 else 'second'} set",
                                            columns=2,
                                            height="auto",
                                            object_fit="contain",
                                            elem_id=f"{name}-masks{k}",
                                            min_width=240,
                                        )
                        gr.Markdown("### Ground truth under each set")
                        change["change_truth_note"] = gr.Markdown(
                            label="Ground truth note", elem_id="change-truth-note"
                        )
                        with gr.Row():
                            for k in (1, 2):
                                change[f"truth_set{k}"] = _picture(
                                    f"Ground truth, {'first' if k == 1 else 'second'} set",
                                    f"truth-set{k}",
                                    min_width=240,
                                )
                    with gr.Tab("One set in detail", id="detail", elem_id="tab-detail"):
                        run = gr.Button("Run", variant="primary", elem_id="run")
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=1, min_width=240):
                                truth = _picture("Ground truth", "truth", height=300)
                            with gr.Column(scale=2, min_width=240):
                                gr.Markdown("## Ground truth")
                                truth_note = gr.Markdown(label="Ground truth note", elem_id="truth-note")
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
                                    label="Picked-mask IoU",
                                    interactive=False,
                                    wrap=True,
                                    column_widths=TABLE_WIDTHS,
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

        change_outputs = [change[key] for key in CHANGE_OUTPUTS]
        # every result of an image, to empty when the image changes (not the parsed prompts: they follow the box)
        results = [components[key] for key in UI_OUTPUTS if key not in ("grids_state", "prompts")] + change_outputs

        def clear_results():
            return cleared_results(len(results))

        example_inputs = [image, prompts, scene_seed, second]
        notes = {example.seed: example.caption for example in world_examples}

        def example_chosen(image: Any, prompts: Any, seed: Any, second: Any) -> tuple:
            """After an example fills the inputs: its note under the seed box, the previous image's results cleared."""
            if seed in notes:
                note = f"**World example**, world scene {seed}: {notes[seed] or 'two prompt sets'}."
            else:
                note = "**Photo example**: no ground truth; the bundled models have never seen a photo."
            return (note, *clear_results())

        chosen = {"fn": example_chosen, "outputs": [scene_note, *results], "run_on_click": True,
                  "cache_examples": False, "api_visibility": "private"}  # fmt: skip
        if world_examples:
            gr.Examples(
                examples=[example.row() for example in world_examples],
                inputs=example_inputs,
                example_labels=[example.label for example in world_examples],
                label="World scenes where the two models differ (measured): pick one, then compare",
                elem_id="world-examples",
                **chosen,
            )
        if photo_examples:
            gr.Examples(
                examples=[example.row() for example in photo_examples],
                inputs=example_inputs,
                example_labels=[example.label for example in photo_examples],
                label="Outside the bundled world: photos (the bundled models have never seen one)",
                elem_id="photo-examples",
                **chosen,
            )

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
        compare, prompt_change = on_gpu(compare), on_gpu(prompt_change)  # ZeroGPU lends a GPU per call
        # Progress, and an error's badge, on one output next to the button: an error (its message in the toast)
        # leaves every earlier result on the page as it was, readable, instead of a badge over each output.
        run.click(
            counted(compare),
            inputs=inputs,
            outputs=[components[key] for key in UI_OUTPUTS],
            api_name="compare",
            show_progress_on=[truth_note],
        )
        change_inputs = [image, prompts, second, clip_weight, stage2_mode, mask_threshold, scene_seed]
        run_change.click(
            counted(prompt_change),
            inputs=change_inputs,
            outputs=change_outputs,
            api_name="prompt_change",
            show_progress_on=[change["change_summary"]],
        )
        scene_outputs = [image, prompts, scene_seed, scene_note, second]

        hidden = {"api_visibility": "private", "show_progress": "hidden"}
        new_scene.click(new_random_scene, outputs=scene_outputs, api_visibility="private").then(
            clear_results, outputs=results, **hidden
        )
        scene_seed.submit(render_scene, inputs=scene_seed, outputs=scene_outputs, api_name="render_scene").then(
            clear_results, outputs=results, **hidden
        )

        def upload_checked(payload: Any) -> tuple:
            """The upload as sent (preprocess=False): a refused file must not fail the event, or the box would
            keep it as a broken image; checked_upload refuses it with a message and empties the box instead."""
            try:
                path = uploaded_path(payload.get("path") if isinstance(payload, dict) else None, image.GRADIO_CACHE)
            except gr.Error:
                return gr.update(), None, ""  # not a file of this app's upload cache: nothing to check or remove
            return checked_upload(models, path)

        image.upload(
            upload_checked, inputs=image, outputs=[image, scene_seed, scene_note], preprocess=False, **hidden
        ).then(clear_results, outputs=results, **hidden)
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
                counted(on_gpu(first_view)),
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
