"""A procedurally generated open-vocabulary world: the project's offline stand-in for COCO, ADE20K and Pascal-Part.

Why it exists: training a CLIP and a segmenter needs images with captions and label maps, and the demo
must be reproducible on a 2-core machine with no downloads. Every scene here is a pure function of its
seed (one ``numpy.random.Generator`` per scene, PIL drawing, numpy compositing), rendered fast enough to
generate training data on the fly, so nothing is stored in git.

What a scene is: stuff regions laid out like a photograph (sky above a horizon of random height with
ground below; sometimes mountains or a forest on the horizon, a road, a river, a lake or a second ground
type; or a room: a wall above a floor) and 0-5 things built from named parts (a car is a body, wheels and
windows), placed on a plausible surface (boats on water, cars preferably on roads, clouds in the sky),
scaled with distance to the horizon and drawn far-to-near so that near things occlude far ones. Stuff and
things are recognisable from appearance, not only colour: every stuff kind has its own texture (bricks,
planks, waves, grass blades, crop rows...) and every thing its own silhouette, and colours are jittered.

How it is drawn: the whole scene is drawn ONCE into an 8-bit image of "primitive ids" (a region drawn
later overwrites what is under it, which is occlusion for free); each id is a material (colour, texture,
shading) plus labels (class, part, instance), so a handful of lookup tables turn that one image into
the RGB image and the three label maps, which therefore can never disagree. Textures come from a bank of
pattern fields per image size, built once from a fixed seed (a cache, but a deterministic one).

Captions are written from the final label maps: an object is named only if enough of it is visible, a
part only if that part is visible, so every class a caption names is in the semantic map.

API: ``render_scene(seed, size, classes)`` -> :class:`Scene`; ``render_training_scene(seed, size)`` (seen
classes only) and ``training_target(scene)`` (labels over SEEN_CLASSES); ``render_object_crop(seed, size)``
-> (image, caption, class name); ``benchmark_sample(benchmark, index, size)`` -> (image, label) and
``benchmark_scene`` (the same with the whole Scene); ``classes_named(caption)``. Vocabularies and
benchmarks live in :mod:`train.world.vocabulary`; ``python -m train.render_world`` draws samples to a PNG.

The package follows its sections: :mod:`.textures`, :mod:`.canvas`, :mod:`.stuff`, :mod:`.things`,
:mod:`.scene`, :mod:`.captions`, :mod:`.crops`, :mod:`.benchmarks`, and :mod:`.vocabulary` (the names
and the seen / unseen split).
"""

from train.world.benchmarks import (
    benchmark_prompts,
    benchmark_sample,
    benchmark_scene,
    benchmark_scene_classes,
    classes_named,
    group_is_present,
)
from train.world.canvas import IGNORE
from train.world.crops import render_object_crop, render_part_crop
from train.world.scene import Scene, SceneObject, render_scene, render_training_scene, training_target

__all__ = [
    "IGNORE",
    "Scene",
    "SceneObject",
    "benchmark_prompts",
    "benchmark_sample",
    "benchmark_scene",
    "benchmark_scene_classes",
    "classes_named",
    "group_is_present",
    "render_object_crop",
    "render_part_crop",
    "render_scene",
    "render_training_scene",
    "training_target",
]
