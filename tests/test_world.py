"""The synthetic world: determinism, label/caption agreement, the seen/unseen split, benchmarks, crops, the viewer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from train import render_world, world
from train.world import vocabulary as vocab
from train.world.vocabulary import GROUP_OF, GROUPS

SEEN_IDS = {vocab.CLASS_ID[c] for c in vocab.SEEN_CLASSES}


def _scene_bytes(scene: world.Scene) -> tuple:
    return (
        scene.image.tobytes(),
        scene.semantic.tobytes(),
        scene.parts.tobytes(),
        scene.instances.tobytes(),
        tuple(scene.captions),
        [(o.instance_id, o.class_name, o.colour, o.bbox) for o in scene.objects],
    )


# -------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_same_bytes_and_other_seeds_differ() -> None:
    first = _scene_bytes(world.render_scene(7, 96))
    world.render_scene(3, 96)  # rendering something else in between must not matter
    assert _scene_bytes(world.render_scene(7, 96)) == first
    images = {world.render_scene(seed, 96).image.tobytes() for seed in range(8)}
    assert len(images) == 8
    captions = {world.render_scene(seed, 96).captions[0] for seed in range(8)}
    assert len(captions) > 4


def test_texture_cache_does_not_change_pixels() -> None:
    before = world.render_scene(11, 80).image.copy()
    world.textures._texture_bank.cache_clear()
    assert np.array_equal(world.render_scene(11, 80).image, before)


def test_scene_shapes_and_types() -> None:
    scene = world.render_scene(5, 128)
    assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
    for array in (scene.semantic, scene.parts, scene.instances):
        assert array.shape == (128, 128) and array.dtype == np.int32
    assert len(scene.captions) >= 3 and all(c.strip() for c in scene.captions)


# ------------------------------------------------------------------------------------ labels vs captions
@pytest.mark.parametrize("render", [world.render_scene, world.render_training_scene])
def test_every_class_a_caption_names_is_in_the_label_map(render) -> None:
    for seed in range(120):
        scene = render(seed, 64)
        present = set(scene.present_classes())
        for caption in scene.captions:
            named = world.classes_named(caption)
            assert named, f"seed {seed}: caption names no class: {caption!r}"
            wrong = {n for n in named if not (n in present or (n in GROUPS and world.group_is_present(n, present)))}
            assert not wrong, f"seed {seed}: {caption!r} names {sorted(wrong)} not in {sorted(present)}"


def test_large_visible_objects_are_named() -> None:
    for seed in range(60):
        scene = world.render_scene(seed, 64)
        named = set().union(*(world.classes_named(c) for c in scene.captions))
        for obj in scene.objects:
            if obj.area >= 0.01 * 64 * 64:
                assert obj.class_name in named, f"seed {seed}: {obj.class_name} ({obj.area} px) not in {scene.captions}"


def test_instances_objects_and_parts_agree() -> None:
    for seed in range(60):
        scene = world.render_scene(seed, 64)
        ids = sorted(int(i) for i in np.unique(scene.instances) if i)
        assert ids == [o.instance_id for o in scene.objects] == list(range(1, len(ids) + 1))
        for obj in scene.objects:
            mask = scene.instances == obj.instance_id
            assert int(mask.sum()) == obj.area
            assert set(np.unique(scene.semantic[mask]).tolist()) == {vocab.CLASS_ID[obj.class_name]}
            x0, y0, x1, y1 = obj.bbox
            assert mask[y0:y1, x0:x1].sum() == obj.area
            assert obj.colour in vocab.COLOURS or obj.class_name == "tree"
        # a part is always inside a thing, and always one of that thing's parts
        assert not np.any((scene.parts != world.IGNORE) & (scene.instances == 0))
        assert not np.any(scene.semantic == world.IGNORE)


def test_drawn_parts_match_the_vocabulary_table() -> None:
    expected = {(c, p) for c, parts in vocab.THING_PARTS.items() for p in parts}
    seen_pairs = set()
    for seed in range(300):
        scene = world.render_scene(seed, 48)
        mask = scene.parts != world.IGNORE
        for c, p in set(zip(scene.semantic[mask].tolist(), scene.parts[mask].tolist())):
            seen_pairs.add((vocab.CLASS_NAMES[c], vocab.PART_NAMES[p]))
    assert seen_pairs == expected


# ----------------------------------------------------------------------------------------------- splits
def test_training_scenes_contain_only_seen_classes() -> None:
    for seed in range(200):
        scene = world.render_training_scene(seed, 48)
        assert set(np.unique(scene.semantic).tolist()) <= SEEN_IDS, f"seed {seed}: {scene.present_classes()}"
        target = world.training_target(scene)
        assert target.dtype == np.uint8 and target.max() < len(vocab.SEEN_CLASSES)


def test_training_target_ignores_unseen_classes() -> None:
    scene = next(
        s for s in (world.render_scene(i, 64) for i in range(100)) if set(s.present_classes()) - set(vocab.SEEN_CLASSES)
    )
    target = world.training_target(scene)
    unseen = np.isin(scene.semantic, [vocab.CLASS_ID[c] for c in vocab.UNSEEN_CLASSES])
    assert unseen.any() and np.all(target[unseen] == 255)
    seen = ~unseen
    names = np.array(vocab.SEEN_CLASSES)[target[seen]]
    assert list(names) == [vocab.CLASS_NAMES[i] for i in scene.semantic[seen]]


def test_vocabularies() -> None:
    assert len(set(vocab.CLASS_NAMES)) == len(vocab.CLASS_NAMES)
    assert len(vocab.STUFF_CLASSES) >= 8 and len(vocab.THING_CLASSES) >= 12 and len(vocab.PART_NAMES) >= 10
    assert len(vocab.COLOURS) >= 6
    assert set(vocab.SEEN_CLASSES) < set(vocab.CLASS_NAMES) and vocab.UNSEEN_CLASSES
    assert set(vocab.THING_PARTS) == set(vocab.THING_CLASSES)
    assert {p for parts in vocab.THING_PARTS.values() for p in parts} == set(vocab.PART_NAMES)
    assert not set(vocab.PART_NAMES) & set(vocab.CLASS_NAMES)  # a part word never doubles as a class
    assert vocab.describe_vocabularies() in vocab.__doc__  # the docstring table the README copies is current
    offsets = sorted(b.seed_offset for b in vocab.BENCHMARKS.values())
    assert all(b - a >= 1_000_000 for a, b in zip(offsets, offsets[1:]))


# ------------------------------------------------------------------------------------------- benchmarks
@pytest.mark.parametrize("name", ["world-voc", "world-full", "world-parts"])
def test_benchmark_sizes_and_label_ranges(name: str) -> None:
    bench = vocab.BENCHMARKS[name]
    assert bench.num_images >= 500 and len(bench.seen) == bench.num_classes
    for index in (0, 1, 2, bench.num_images - 1):
        image, label = world.benchmark_sample(bench, index, size=64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and label.shape == (64, 64)
        values = set(np.unique(label).tolist())
        assert values <= set(range(bench.num_classes)) | {255}
        assert values - {255}, f"{name}[{index}] has no labelled pixel"
    image, label = world.benchmark_sample(name, 3, size=64)
    again_image, again_label = world.benchmark_sample(bench, 3, size=64)
    assert np.array_equal(image, again_image) and np.array_equal(label, again_label)
    with pytest.raises(ValueError, match="index"):
        world.benchmark_sample(bench, bench.num_images)


def test_benchmark_granularity() -> None:
    voc, full, parts = (vocab.BENCHMARKS[n] for n in ("world-voc", "world-full", "world-parts"))
    stuff_ids = [vocab.CLASS_ID[c] for c in vocab.STUFF_CLASSES]
    unseen_in_full = set()
    for index in range(15):
        scene, label = world.benchmark_scene(voc, index, 64)
        assert np.all(label[np.isin(scene.semantic, stuff_ids)] == 255)
        assert {vocab.CLASS_NAMES[i] for i in np.unique(scene.semantic)} <= set(vocab.STUFF_CLASSES) | set(
            voc.class_names
        )
        scene, label = world.benchmark_scene(full, index, 64)
        assert not np.any(label == 255)
        unseen_in_full |= {full.class_names[i] for i in np.unique(label) if not full.seen[i]}
        scene, label = world.benchmark_scene(parts, index, 64)
        assert np.array_equal(label == 255, scene.parts == world.IGNORE)
    assert unseen_in_full, "world-full must contain unseen classes"
    assert not any(parts.seen) and sum(voc.seen) > len(voc.seen) / 2


# ------------------------------------------------------------------------------------------------ crops
def test_object_crops_are_deterministic_and_captioned() -> None:
    for seed in range(30):
        image, caption, name = world.render_object_crop(seed, 64)
        again = world.render_object_crop(seed, 64)
        assert image.tobytes() == again[0].tobytes() and (caption, name) == again[1:]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        named = world.classes_named(caption)
        own = {name, GROUP_OF.get(name)}  # the class itself and/or its group
        assert named & own and named - own <= set(vocab.STUFF_CLASSES), (caption, name)
    for name in vocab.CLASS_NAMES:
        _, caption, got = world.render_object_crop(1, 48, class_name=name)
        assert got == name and (
            name in world.classes_named(caption) or GROUP_OF.get(name) in world.classes_named(caption)
        )


def test_bad_arguments_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="seed"):
        world.render_scene(-1)
    with pytest.raises(ValueError, match="size"):
        world.render_scene(0, 8)
    with pytest.raises(ValueError, match="unknown classes"):
        world.render_scene(0, 64, classes=["sky", "unicorn"])
    with pytest.raises(ValueError, match="stuff"):
        world.render_scene(0, 64, classes=["car"])
    with pytest.raises(ValueError, match="world-voc"):
        world.benchmark_sample("world-nope", 0)
    with pytest.raises(ValueError, match="class_name"):
        world.render_object_crop(0, 64, class_name="unicorn")


def test_restricted_vocabulary_is_respected() -> None:
    classes = ("sky", "sand", "water", "boat", "bird")
    ids = {vocab.CLASS_ID[c] for c in classes}
    for seed in range(40):
        assert set(np.unique(world.render_scene(seed, 48, classes=classes).semantic).tolist()) <= ids


# ----------------------------------------------------------------------------------------------- viewer
def test_render_world_writes_png(tmp_path) -> None:
    out = tmp_path / "grid.png"
    render_world.main(["--out", str(out), "--n", "2", "--size", "64"])
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.width >= 3 * 64 and grid.height >= 2 * 64
    bench = tmp_path / "bench.png"
    render_world.main(["--out", str(bench), "--n", "1", "--size", "64", "--benchmark", "world-parts"])
    crops = tmp_path / "crops.png"
    render_world.main(["--out", str(crops), "--n", "3", "--size", "48", "--crops"])
    assert bench.stat().st_size > 0 and crops.stat().st_size > 0


def test_each_benchmark_has_held_out_dev_scenes_with_its_rules() -> None:
    for name, bench in vocab.BENCHMARKS.items():
        dev = vocab.get_benchmark(name + "-dev")
        assert dev.num_images == vocab.DEV_IMAGES and dev.num_images < bench.num_images
        same = ("class_names", "seen", "granularity")
        assert [getattr(dev, key) for key in same] == [getattr(bench, key) for key in same]
        shown = {world.benchmark_sample(bench, index, size=64)[0].tobytes() for index in range(bench.num_images)}
        for index in (0, dev.num_images - 1):
            image, label = world.benchmark_sample(dev, index, size=64)
            assert image.tobytes() not in shown  # never one of the images the benchmark reports
            assert set(np.unique(label).tolist()) <= set(range(dev.num_classes)) | {255}
    seeds = {b.seed_offset + i for b in vocab.BENCHMARKS.values() for i in range(b.num_images)}
    assert not seeds & {b.seed_offset + i for b in vocab.DEV_BENCHMARKS.values() for i in range(b.num_images)}
