"""app.py's adapter without a server: world scenes, ground truth, per-image scores, vocabulary, flags."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from demo import handlers
from demo.comparison import DemoInputError, DemoModels
from tests.demo_fixtures import FakeSegmenter
from train.world.demo import demo_scene, prompt_sets


def world_fake(**options) -> FakeSegmenter:
    fake = FakeSegmenter(**options)
    fake.config.clip = SimpleNamespace(model_name="tiny-clip")  # the world's CLIP: world features on
    return fake


@pytest.fixture()
def world_models() -> DemoModels:
    return DemoModels(baseline=world_fake(), pmp=world_fake(shift=1, follows_prompts=True))


def test_vocabulary_clicks_append_a_word_once():
    assert handlers.add_word("", "wheel") == "wheel"
    assert handlers.add_word("car, window", "wheel") == "car, window, wheel"
    assert handlers.add_word("car, wheel", "wheel") == "car, wheel"
    assert handlers.add_word(None, "sky") == "sky"
    names, labels = handlers.vocabulary_samples()["part"]
    assert "beak (unseen)" in labels and "wheel" in labels and len(names) == len(labels)


def test_prompts_outside_the_vocabulary_are_flagged_for_world_models_only(world_models):
    text = handlers.preview_prompts(world_models, "astronaut, red car")
    assert "`astronaut`: not in the bundled models' vocabulary" in text and "red car`:" not in text
    real = DemoModels(baseline=FakeSegmenter(), pmp=FakeSegmenter())
    assert "vocabulary" not in handlers.preview_prompts(real, "astronaut, red car")
    assert not handlers.knows_the_world(real) and handlers.knows_the_world(world_models)


def test_a_scene_is_drawn_once_per_seed_and_a_random_one_without(world_models, tmp_path):
    path, prompts, seed, note, second = handlers.scene_for_ui(world_models, 7, output_root=tmp_path)
    assert seed == 7 and "World scene **7**" in note and prompts
    sets = prompt_sets(demo_scene(7))  # both sets fit the new scene: its things whole, then by their parts
    assert (prompts, second) == (", ".join(sets["wholes"]), ", ".join(sets["parts"])) and prompts != second
    assert np.array_equal(np.asarray(Image.open(path)), demo_scene(7).image)
    again = handlers.scene_for_ui(world_models, "7", output_root=tmp_path)[0]
    assert again != path and Image.open(again).tobytes() == Image.open(path).tobytes()  # each request its own folder
    _, _, random_seed, _, _ = handlers.scene_for_ui(world_models, None, output_root=tmp_path)
    assert 0 <= random_seed < 1_000_000
    with pytest.raises(gr.Error, match="whole number"):
        handlers.scene_for_ui(world_models, "seven", output_root=tmp_path)


def test_ground_truth_only_for_the_scene_itself(world_models):
    scene = demo_scene(3)
    picture = Image.fromarray(scene.image)
    [(truth, note)] = handlers.scene_truths(world_models, 3, picture, ["sky", "astronaut"])
    assert truth is not None and "Ground truth of world scene 3" in note and "`astronaut`: no world name" in note
    [(other, note)] = handlers.scene_truths(world_models, 4, picture, ["sky"])
    assert other is None and note.startswith("This image is not world scene 4.")
    [(none, note)] = handlers.scene_truths(world_models, None, picture, ["sky"])
    assert none is None and "No ground truth for your own image" in note and "--baseline" in note
    with pytest.raises(DemoInputError, match="whole number"):
        handlers.scene_truths(world_models, -2, picture, ["sky"])


def test_compare_on_a_world_scene_scores_both_models(world_models, tmp_path):
    path, prompts, seed, _, _ = handlers.scene_for_ui(world_models, 5, output_root=tmp_path)
    values = dict(zip(handlers.UI_OUTPUTS, handlers.compare_for_ui(
        world_models, path, prompts, 0.65, "pool", 0.5, True, seed, output_root=tmp_path
    )))  # fmt: skip
    assert Path(values["truth"]).is_file() and "Ground truth of world scene 5" in values["truth_note"]
    for name in ("baseline", "pmp"):
        assert " · mIoU " in values[f"{name}_title"] and "recall" in values[f"{name}_title"]
    uploaded = dict(zip(handlers.UI_OUTPUTS, handlers.compare_for_ui(
        world_models, path, prompts, 0.65, "pool", 0.5, True, None, output_root=tmp_path
    )))  # fmt: skip
    assert uploaded["truth"] is None and "mIoU" not in uploaded["baseline_title"]


def test_prompt_change_values_follow_change_outputs(world_models, tmp_path):
    path, prompts, seed, _, _ = handlers.scene_for_ui(world_models, 5, output_root=tmp_path)
    values = handlers.prompt_change_for_ui(
        world_models, path, prompts, "car, wheel", 0.65, "pool", 0.5, seed, output_root=tmp_path
    )
    named = dict(zip(handlers.CHANGE_OUTPUTS, values))
    assert len(values) == len(handlers.CHANGE_OUTPUTS)
    assert "did **not move**" in named["baseline_change_title"] and "**moved**" in named["pmp_change_title"]
    assert "mIoU on this image" in named["pmp_change_title"]
    assert all(Path(named[key]).is_file() for key in ("baseline_set1", "pmp_set2", "truth_set1", "truth_set2"))
    assert [caption.split(" · ")[0] for _, caption in named["pmp_masks2"]] == ["car", "wheel"]
    with pytest.raises(gr.Error, match="Second prompt set: no prompts"):  # the empty box is named
        handlers.prompt_change_for_ui(world_models, path, prompts, "", 0.65, "pool", 0.5, seed, output_root=tmp_path)
    with pytest.raises(gr.Error, match=r"Prompts \(the first set\): no prompts"):
        handlers.prompt_change_for_ui(world_models, path, "", prompts, 0.65, "pool", 0.5, seed, output_root=tmp_path)


def test_every_api_output_has_a_short_meaningful_name(tmp_path) -> None:
    """gradio_client's view_api names each output after its component's label: no "value_56", no sentence."""
    from demo.comparison import DemoModels
    from demo.layout import build_app
    from tests.demo_fixtures import FakeSegmenter

    demo = build_app(DemoModels(FakeSegmenter(), FakeSegmenter(shift=1)), output_root=tmp_path, examples=[])
    endpoints = demo.get_api_info()["named_endpoints"]
    assert sorted(endpoints) == ["/compare", "/prompt_change", "/render_scene"]
    for name, endpoint in endpoints.items():
        labels = [output.get("label") or "" for output in endpoint["returns"]]
        assert all(label and not label.startswith("value_") and len(label) <= 45 for label in labels), (name, labels)
        assert len(set(labels)) == len(labels), (name, labels)
    assert [p["parameter_name"] for p in endpoints["/compare"]["parameters"]] == [
        "image", "prompts", "clip_weight", "stage2_mode", "mask_threshold", "sort_by_score", "scene_seed"
    ]  # fmt: skip


def test_an_upload_that_is_not_an_image_is_refused_at_once_and_removed(world_models, tmp_path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("not an image at all")
    with pytest.warns(UserWarning, match="could not be read as an image|not an image|cannot"):
        assert handlers.checked_upload(world_models, str(fake)) == (None, None, "")
    assert not fake.exists()
    real = tmp_path / "scene.png"
    Image.fromarray(demo_scene(3).image).save(real)
    kept, seed, note = handlers.checked_upload(world_models, str(real))
    assert kept == gr.update() and (seed, note) == (None, "") and real.exists()


def test_the_prompt_boxes_never_cut_a_paste(tmp_path) -> None:
    """A 10,000-character paste reaches the handler whole and is refused with its real length."""
    from demo.comparison import DemoModels, read_request_prompts
    from demo.layout import build_app

    models = DemoModels(FakeSegmenter(), FakeSegmenter(shift=1))
    demo = build_app(models, output_root=tmp_path, examples=[])
    boxes = [
        block for block in demo.blocks.values() if getattr(block, "elem_id", None) in ("prompts", "second-prompts")
    ]
    assert len(boxes) == 2 and all(box.max_length is None for box in boxes)
    with pytest.raises(DemoInputError, match="^Second prompt set: the prompt text is 10,000 characters long"):
        read_request_prompts(models, "a" * 10_000, box="Second prompt set")


def test_model_calls_go_through_zerogpus_decorator_only_where_spaces_is_installed() -> None:
    from types import SimpleNamespace

    from demo.gpu import GPU_SECONDS, on_gpu

    def compare():
        return "compared"

    asked = []

    def gpu(duration: int):
        asked.append(duration)
        return lambda function: lambda *args: ("on a lent GPU", function(*args))

    assert on_gpu(compare) is compare  # this machine has no `spaces` package: the function as it is
    assert on_gpu(compare, spaces=SimpleNamespace(GPU=gpu))() == ("on a lent GPU", "compared")
    assert asked == [GPU_SECONDS]
