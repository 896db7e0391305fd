"""The label hierarchy and the prompt-dependent target: the finest prompted name of a pixel's chain wins."""

from __future__ import annotations

import numpy as np
import pytest

from train.world import render_scene
from train.world.hierarchy import (
    ALL_NAMES,
    GRANULARITY,
    GROUP_OF,
    SEEN_GROUPS,
    SEEN_NAMES,
    SEEN_PARTS,
    names_present,
    prompt_target,
    seen_parts_of,
)
from train.world.vocabulary import CLASS_ID, PART_ID, SEEN_CLASSES, THING_PARTS

IGNORE = 255


def hand_made_maps() -> tuple[np.ndarray, np.ndarray]:
    """One row: road | car body | car wheel | car window | house window | house roof | cat | unlabelled."""
    semantic = np.array([[CLASS_ID[c] for c in ("road", "car", "car", "car", "house", "house", "cat")] + [IGNORE]])
    parts = np.array(
        [
            [
                IGNORE,
                PART_ID["body"],
                PART_ID["wheel"],
                PART_ID["window"],
                PART_ID["window"],
                PART_ID["roof"],
                IGNORE,
                IGNORE,
            ]
        ]
    )
    return semantic, parts


def test_the_finest_prompted_name_wins_and_unprompted_pixels_have_no_target() -> None:
    semantic, parts = hand_made_maps()
    prompts = ["car", "wheel"]
    target = prompt_target(semantic, parts, prompts)
    assert target.tolist() == [[IGNORE, 0, 1, 0, IGNORE, IGNORE, IGNORE, IGNORE]]
    target = prompt_target(semantic, parts, ["vehicle", "window", "road", "animal"])
    # the car is "vehicle" except its window; the house window is "window" too; the cat is an "animal"
    assert target.tolist() == [[2, 0, 0, 1, 1, IGNORE, 3, IGNORE]]
    target = prompt_target(semantic, parts, ["building", "roof", "house"])  # thing beats group, part beats thing
    assert target.tolist() == [[IGNORE, IGNORE, IGNORE, IGNORE, 2, 1, IGNORE, IGNORE]]


def test_prompt_order_does_not_change_which_name_a_pixel_gets() -> None:
    semantic, parts = hand_made_maps()
    names = ["wheel", "vehicle", "car", "road"]
    reference = prompt_target(semantic, parts, names)
    for order in ([3, 2, 1, 0], [1, 3, 0, 2]):
        shuffled = [names[i] for i in order]
        target = prompt_target(semantic, parts, shuffled)
        as_names = np.array(shuffled + ["-"])[np.where(target == IGNORE, len(shuffled), target)]
        assert (as_names == np.array(names + ["-"])[np.where(reference == IGNORE, len(names), reference)]).all()


def test_unknown_names_are_refused() -> None:
    semantic, parts = hand_made_maps()
    with pytest.raises(ValueError, match="outside the world's vocabulary"):
        prompt_target(semantic, parts, ["car", "spaceship"])


def test_seen_and_unseen_at_every_granularity() -> None:
    assert {GRANULARITY[n] for n in SEEN_NAMES} == {"stuff", "thing", "part", "group"}
    unseen = [n for n in ALL_NAMES if n not in SEEN_NAMES]
    assert {GRANULARITY[n] for n in unseen} == {"stuff", "thing", "part", "group"}
    assert "beak" not in SEEN_PARTS and "backrest" not in SEEN_PARTS  # held-out parts of seen things
    assert seen_parts_of("car") == ("wheel", "window") and seen_parts_of("truck") == ()  # an unseen thing
    for group in SEEN_GROUPS:
        assert any(thing in SEEN_CLASSES for thing, g in GROUP_OF.items() if g == group)
    for thing in SEEN_CLASSES:
        assert set(seen_parts_of(thing)) <= set(THING_PARTS.get(thing, ()))


def test_names_present_match_the_pixels_of_a_rendered_scene() -> None:
    scene = next(s for s in (render_scene(seed, 96) for seed in range(40)) if len(s.objects) >= 2)
    present = names_present(scene.semantic, scene.parts)
    for level, names in present.items():
        for name in names:  # every present name claims at least one pixel
            assert (prompt_target(scene.semantic, scene.parts, [name]) == 0).any(), (level, name)
    absent = [n for n in ALL_NAMES if n not in sum(present.values(), ())]
    assert (prompt_target(scene.semantic, scene.parts, absent) == IGNORE).all()


def test_the_training_sampler_prompts_only_seen_names_and_no_negative_with_pixels() -> None:
    from train.batches import sample_world_prompts
    from train.world import render_training_scene

    granularities_used = set()
    for seed in range(60):
        scene = render_training_scene(seed, 96)
        rng = np.random.default_rng(seed)
        prompts = sample_world_prompts(scene.semantic, scene.parts, rng, negative_prob=0.3)
        assert prompts and len(set(prompts)) == len(prompts)
        assert all(name in SEEN_NAMES for name in prompts)
        target = prompt_target(scene.semantic, scene.parts, prompts)
        present = set(sum(names_present(scene.semantic, scene.parts).values(), ()))
        for index, name in enumerate(prompts):
            if name not in present:  # a negative: it claims no pixel
                assert not (target == index).any(), name
            else:
                granularities_used.add(GRANULARITY[name])
    assert granularities_used == {"stuff", "thing", "part", "group"}  # every granularity gets trained


def test_sampled_prompts_are_fixed_by_the_seed() -> None:
    from train.batches import sample_world_prompts
    from train.world import render_training_scene

    scene = render_training_scene(5, 96)
    first = sample_world_prompts(scene.semantic, scene.parts, np.random.default_rng(1))
    assert first == sample_world_prompts(scene.semantic, scene.parts, np.random.default_rng(1))


def test_render_world_draws_one_target_per_prompt_granularity() -> None:
    from train.render_world import hierarchy_grid

    grid = hierarchy_grid(1, 64, zoom=1)
    assert grid.width == 4 * (64 + 6) and grid.height > 64


def test_part_close_ups_show_the_part_and_name_it() -> None:
    from train.world import render_part_crop
    from train.world.vocabulary import PART_NAMES

    for name in PART_NAMES:
        image, caption = render_part_crop(3, name, 64)
        assert image.shape == (64, 64, 3) and name in caption
        again = render_part_crop(3, name, 64)
        assert image.tobytes() == again[0].tobytes() and caption == again[1]
    with pytest.raises(ValueError, match="no thing has a part"):
        render_part_crop(0, "propeller")
