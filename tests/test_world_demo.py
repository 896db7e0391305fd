"""train.world.demo: the demo's scenes, their ground truth under the prompts, per-image scores, vocabulary."""

from __future__ import annotations

import re

import numpy as np
import pytest

from train.world.canvas import IGNORE
from train.world.crops import render_object_crop, render_part_crop
from train.world.demo import (
    DEMO_SCENE_SIZE,
    KNOWN_WORDS,
    MAX_DEMO_SEED,
    check_demo_seed,
    demo_scene,
    ground_truth,
    image_scores,
    scene_prompts,
    unknown_words,
    vocabulary,
)
from train.world.hierarchy import prompt_target
from train.world.scene import render_scene
from train.world.vocabulary import ALL_NAMES, CLASS_ID, PART_NAMES, SEEN_NAMES


def test_demo_scenes_are_fixed_by_seed_and_apart_from_training():
    first, again, other = demo_scene(7), demo_scene("7"), demo_scene(8)
    assert first.image.shape == (DEMO_SCENE_SIZE, DEMO_SCENE_SIZE, 3)
    assert np.array_equal(first.image, again.image)
    assert not np.array_equal(first.image, other.image)
    assert not np.array_equal(first.image, render_scene(7, DEMO_SCENE_SIZE).image)  # not the training seed 7


@pytest.mark.parametrize("seed", [-1, MAX_DEMO_SEED + 1, 1.5, "abc", None, True, "1e3"])
def test_bad_seeds_are_refused_with_the_accepted_range(seed):
    with pytest.raises(ValueError, match="whole number from 0 to 999,999,999"):
        check_demo_seed(seed)


def test_seed_forms_a_visitor_or_the_api_sends():
    assert check_demo_seed(3.0) == 3 and check_demo_seed(" 12 ") == 12 and check_demo_seed(np.int64(5)) == 5


def test_ground_truth_is_the_world_target_and_outside_names_claim_nothing():
    scene = demo_scene(3)
    prompts = scene_prompts(scene)
    assert prompts and all(name in ALL_NAMES for name in prompts)
    truth = ground_truth(scene, ["astronaut", *prompts])
    assert truth.outside_world == ["astronaut"]
    assert not (truth.target == 0).any()  # the outside name owns no pixel
    expected = prompt_target(scene.semantic, scene.parts, prompts)
    shifted = np.where(expected == IGNORE, IGNORE, expected.astype(np.int64) + 1)
    assert np.array_equal(truth.target, shifted)


def test_finest_prompted_name_wins_on_a_demo_scene():
    scene = next(s for s in map(demo_scene, range(50)) if (s.semantic == CLASS_ID["car"]).any())
    car = scene.semantic == CLASS_ID["car"]
    wheel = car & (scene.parts == PART_NAMES.index("wheel"))
    truth = ground_truth(scene, ["car", "wheel"])
    assert (truth.target[wheel] == 1).all() and (truth.target[car & ~wheel] == 0).all()
    assert "car" in truth.present()


def test_image_scores_are_perfect_for_the_truth_and_zero_for_nothing():
    scene = demo_scene(3)
    truth = ground_truth(scene, scene_prompts(scene))
    semantic = np.where(truth.target == IGNORE, -1, truth.target.astype(np.int64))
    present = np.unique(truth.target[truth.target != IGNORE])
    proposals = np.stack([(truth.target == k).astype(np.float32) for k in present])
    perfect = image_scores(truth, semantic, proposals)
    assert perfect.miou == pytest.approx(1.0) and perfect.recall == pytest.approx(1.0)
    assert perfect.scored == len(present)
    empty = image_scores(truth, np.full_like(semantic, -1), np.zeros((3, *semantic.shape), np.float32))
    assert empty.miou == 0.0 and empty.recall == 0.0


def test_vocabulary_lists_every_name_once_with_its_split():
    groups = vocabulary()
    assert list(groups) == ["stuff", "thing", "part", "group"]
    listed = [name for entries in groups.values() for name, _ in entries]
    assert sorted(listed) == sorted(ALL_NAMES)
    seen = {name for entries in groups.values() for name, is_seen in entries if is_seen}
    assert seen == set(SEEN_NAMES)
    assert ("beak", False) in groups["part"] and ("wheel", True) in groups["part"]


def test_unknown_words_flag_what_the_bundled_clip_never_read():
    assert unknown_words("astronaut") == ["astronaut"]
    assert unknown_words("red car") == [] and unknown_words("Lamp Posts") == []
    assert unknown_words("coffee cup on a table") == ["coffee", "cup"]
    assert unknown_words("42") == ["42"]


def test_the_captions_the_tiny_clip_reads_use_only_known_words():
    """KNOWN_WORDS claims to cover the CLIP's training text: scene captions, object crops, part close-ups."""
    words: set[str] = set()
    for seed in range(120):
        for caption in render_scene(seed, 64).captions:
            words.update(re.findall("[a-z]+", caption.lower()))
        words.update(re.findall("[a-z]+", render_object_crop(seed, 64)[1].lower()))
    for index, part in enumerate(PART_NAMES):
        words.update(re.findall("[a-z]+", render_part_crop(index, part, 64)[1].lower()))
    assert words - KNOWN_WORDS == set()
    assert {name for name in ALL_NAMES if " " not in name} <= words  # every one-word name was read
