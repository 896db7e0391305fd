"""OVSeg's evaluation protocol: short-side resizing, predictions at the label's size, per-benchmark weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pmp.images import model_input_size
from pmp.segmenter import Segmenter
from tests.test_evaluate import StubSegmenter
from tests.tiny import tiny_segmenter_config
from train.evaluate import evaluate, format_table, main


@pytest.mark.parametrize(
    ("height", "width", "resize", "expected"),
    [
        (375, 500, "short", (853, 640)),  # 640 / 375: the short side to 640
        (375, 500, "long", (640, 480)),  # this project's fast protocol: the long side to 640
        (300, 2100, "short", (2560, 366)),  # 640 / 300 would make the long side 4480: capped at 4 x 640
    ],
)
def test_model_input_sizes_by_hand(height, width, resize, expected):
    assert model_input_size(width, height, 640, resize) == expected


def test_the_segmenter_pads_the_short_side_resized_image_to_multiples_of_32():
    torch.manual_seed(0)
    segmenter = Segmenter(tiny_segmenter_config("pmp"))
    for (height, width), padded in (((375, 500), (640, 864)), ((300, 2100), (384, 2560))):
        image = Image.fromarray(np.zeros((height, width, 3), np.uint8))
        pixels, valid = segmenter.preprocess(image, 640, "short")
        assert tuple(pixels.shape[2:]) == padded and valid == model_input_size(width, height, 640, "short")[::-1]


class WideImage:
    """One 300 x 2100 image: wider than the image loader keeps (2048), so the prediction comes back smaller."""

    name = "wide"
    class_names = ("sky", "grass")
    seen = np.array([True, False])
    ignore_label = -1

    def __len__(self) -> int:
        return 1

    def image_prompts(self, index: int) -> None:
        return None

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = np.zeros((300, 2100, 3), np.uint8)
        image[:150] = (90, 160, 230)
        label = np.zeros((300, 2100), np.int64)
        label[150:] = 1
        return image, label


def test_an_image_of_any_size_is_scored_at_its_labels_size():
    torch.manual_seed(0)
    segmenter = Segmenter(tiny_segmenter_config("pmp"))
    result = evaluate(segmenter, WideImage(), show_progress=False)  # raised on the size mismatch before
    assert result["num_images"] == 1 and result["options"]["protocol"] == "ovseg"
    assert result["options"]["resize"] == "short" and 0.0 <= result["pixel_accuracy"] <= 1.0
    assert "protocol           ovseg, CLIP weight the checkpoint's" in format_table(
        result
    )  # printed, not only recorded


def _voc(root: Path) -> Path:
    images = root / "VOCdevkit/VOC2012/JPEGImages"
    labels = root / "VOCdevkit/VOC2012/annotations_detectron2/val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    Image.fromarray(np.full((6, 8, 3), 200, np.uint8)).save(images / "2007_000033.jpg")
    Image.fromarray(np.full((6, 8), 14, np.uint8)).save(labels / "2007_000033.png")
    return root


def test_ovsegs_per_benchmark_weight_is_one_flag(tmp_path, capsys):
    stub = StubSegmenter()
    argv = ["--benchmark", "voc20", "--data-root", str(_voc(tmp_path)), "--json"]
    assert main([*argv, "--ovseg-clip-weights"], segmenter_factory=lambda *_: stub) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["options"]["clip_weight"] == 0.45 and stub.options[0]["clip_weight"] == 0.45  # OVSeg's VOC weight
    assert main([*argv, "--protocol", "long_side"], segmenter_factory=lambda *_: stub) == 0
    result = json.loads(capsys.readouterr().out)
    assert "clip_weight" not in result["options"] and result["options"]["protocol"] == "long_side"
    with pytest.raises(SystemExit):
        main([*argv, "--ovseg-clip-weights", "--clip-weight", "0.5"], segmenter_factory=lambda *_: stub)
    assert "leave out --clip-weight" in capsys.readouterr().err


def test_ovsegs_tight_crops_against_its_own_recipe_by_hand():
    """adapter.py _preprocess_image as OVSeg writes it: binarise at MASK_THR, cut the tight box, fill outside
    the mask with 255 * the mean colour, normalise, stretch to 224 (here the tower's size) bicubically."""
    import torch.nn.functional as F

    from pmp.clip import CLIPModel
    from pmp.config import CLIP_MEAN, CLIP_STD, CLIPConfig, tiny_clip_model_cfg
    from pmp.stage2 import masked_crops

    clip = CLIPModel.build(CLIPConfig(model_name="tiny", model_cfg=tiny_clip_model_cfg()))
    image = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    mask = np.zeros((1, 10, 12), np.float32)
    mask[0, 2:5, 1:7] = 0.9
    mask[0, 6, 8] = 0.45  # inside the mask at OVSeg's Swin-B threshold 0.4, outside at 0.5
    crops, kept = masked_crops(clip, image, mask, views=("masked", "box"), geometry=("tight", 0.4))
    binary = mask[0] > 0.4
    pixels = torch.from_numpy(image).permute(2, 0, 1).float()  # (3, H, W) in 0..255
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    region, inside = pixels[:, 2:7, 1:9], torch.from_numpy(binary[2:7, 1:9]).float()  # rows 2..6, cols 1..8
    filled = region * inside + (1 - inside) * 255.0 * mean
    for view, source in ((0, filled), (1, region)):
        expected = F.interpolate(((source / 255.0 - mean) / std)[None], size=(128, 128), mode="bicubic")[0]
        assert torch.allclose(crops[view], expected, atol=1e-4), view
    assert kept.tolist() == [0]
    square = masked_crops(clip, image, mask, views=("masked",))[0]
    assert not torch.allclose(square[0], crops[0], atol=1e-2)  # this project's square crop differs
