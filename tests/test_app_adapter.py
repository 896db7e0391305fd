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
from train.world.demo import demo_scene


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
    path, prompts, seed, note = handlers.scene_for_ui(world_models, 7, output_root=tmp_path)
    assert seed == 7 and "World scene **7**" in note and prompts
    assert np.array_equal(np.asarray(Image.open(path)), demo_scene(7).image)
    again = handlers.scene_for_ui(world_models, "7", output_root=tmp_path)[0]
    assert again != path and Image.open(again).tobytes() == Image.open(path).tobytes()  # each request its own folder
    _, _, random_seed, _ = handlers.scene_for_ui(world_models, None, output_root=tmp_path)
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
    path, prompts, seed, _ = handlers.scene_for_ui(world_models, 5, output_root=tmp_path)
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
    path, prompts, seed, _ = handlers.scene_for_ui(world_models, 5, output_root=tmp_path)
    values = handlers.prompt_change_for_ui(
        world_models, path, prompts, "car, wheel", 0.65, "pool", 0.5, seed, output_root=tmp_path
    )
    named = dict(zip(handlers.CHANGE_OUTPUTS, values))
    assert len(values) == len(handlers.CHANGE_OUTPUTS)
    assert "did **not move**" in named["baseline_change_title"] and "shift" in named["pmp_change_title"]
    assert "mIoU on this image" in named["pmp_change_title"]
    assert all(Path(named[key]).is_file() for key in ("baseline_set1", "pmp_set2", "truth_set1", "truth_set2"))
    assert [caption.split(" · ")[0] for _, caption in named["pmp_masks2"]] == ["car", "wheel"]
    with pytest.raises(gr.Error, match="no prompts"):
        handlers.prompt_change_for_ui(world_models, path, prompts, "", 0.65, "pool", 0.5, seed, output_root=tmp_path)
