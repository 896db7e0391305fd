"""pmp.visualize: colours, overlay + legend, label-map / mask PNGs, proposal grid, save_outputs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pmp.visualize import (
    NO_LABEL_8BIT,
    NO_LABEL_16BIT,
    PALETTE,
    colour_for,
    colourise,
    label_map_png,
    mask_png,
    overlay,
    proposal_grid,
    save_outputs,
    slug,
)


def _scene() -> tuple[Image.Image, np.ndarray]:
    """A grey 40x60 image; label 0 on the left third, label 1 in the middle, nothing on the right."""
    image = Image.new("RGB", (60, 40), (100, 100, 100))
    semantic = np.full((40, 60), -1, np.int64)
    semantic[:, :20] = 0
    semantic[:, 20:40] = 1
    return image, semantic


def test_palette_is_distinct_and_extends_deterministically():
    assert len(set(PALETTE)) == len(PALETTE)
    extra = [colour_for(k) for k in range(len(PALETTE), len(PALETTE) + 80)]
    assert extra == [colour_for(k) for k in range(len(PALETTE), len(PALETTE) + 80)]
    assert len(set(extra)) == 80


def test_colourise_tints_labelled_pixels_and_keeps_the_rest():
    image, semantic = _scene()
    pixels = colourise(image, semantic, alpha=0.5, boundaries=False)
    expected_left = np.rint(np.array([100, 100, 100]) * 0.5 + np.array(colour_for(0)) * 0.5)
    assert pixels[10, 5].tolist() == expected_left.tolist()
    assert pixels[10, 55].tolist() == [100, 100, 100]  # no label: untouched
    with_edges = colourise(image, semantic, alpha=0.5, boundaries=True)
    assert with_edges[10, 19].tolist() == [255, 255, 255]  # boundary between label 0 and 1


def test_colourise_resizes_a_smaller_label_map():
    image, semantic = _scene()
    half = semantic[::2, ::2]
    assert (
        colourise(image, half, boundaries=False)[10, 5].tolist()
        == colourise(image, semantic, boundaries=False)[10, 5].tolist()
    )


def test_overlay_adds_a_legend_below_the_image():
    image, semantic = _scene()
    result = overlay(image, semantic, ["sky", "house", "car"])
    assert result.mode == "RGB"
    assert result.width == 320 and result.height > 40  # canvas widened to fit the legend
    legend = np.asarray(result)[40:]
    for k in range(3):  # every prompt's swatch is drawn, even "car" which has no pixels
        assert (legend == np.array(colour_for(k), np.uint8)).all(-1).any()


def test_overlay_enlarges_tiny_images_and_handles_no_labels():
    tiny = overlay(Image.new("RGB", (1, 1)), np.zeros((1, 1), np.int64), ["dot"])
    assert tiny.width >= 256
    empty = overlay(Image.new("RGB", (300, 300)), np.full((300, 300), -1), [], legend=True)
    assert empty.size == (320, 300)


def test_overlay_rejects_inconsistent_inputs():
    image, semantic = _scene()
    with pytest.raises(ValueError, match="only 1 labels"):
        overlay(image, semantic, ["sky"])
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, semantic, ["a", "b"], alpha=2)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        overlay(image, semantic[None], ["a", "b"])


def test_overlay_renders_long_and_non_latin_labels():
    image, semantic = _scene()
    result = overlay(image, semantic, ["a very long label " * 10, "\u732b \U0001f408 \u0434\u043e\u043c"])
    assert result.height > 40


def test_label_map_png_8_and_16_bit_round_trip(tmp_path):
    _, semantic = _scene()
    path = tmp_path / "labels.png"
    label_map_png(semantic).save(path)
    reread = np.asarray(Image.open(path))
    assert reread.dtype == np.uint8
    assert reread[0, 0] == 0 and reread[0, 25] == 1 and reread[0, 50] == NO_LABEL_8BIT
    wide = semantic.copy()
    wide[0, 0] = 300
    path16 = tmp_path / "labels16.png"
    label_map_png(wide).save(path16)
    reread16 = np.asarray(Image.open(path16))
    assert reread16[0, 0] == 300 and reread16[0, 50] == NO_LABEL_16BIT
    assert label_map_png(semantic, num_labels=400).mode == "I;16"  # depth follows the prompt count
    with pytest.raises(ValueError, match="num_labels"):
        label_map_png(semantic, num_labels=1)


def test_mask_png_from_bool_and_float():
    assert np.asarray(mask_png(np.array([[True, False]]))).tolist() == [[255, 0]]
    assert np.asarray(mask_png(np.array([[0.7, 0.2]]))).tolist() == [[255, 0]]
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_png(np.zeros((2, 2, 2)))


def test_proposal_grid_layout_and_sorting():
    image = Image.new("RGB", (64, 32), (200, 200, 200))
    proposals = np.zeros((12, 8, 16), np.float32)
    proposals[3, :, :8] = 1.0  # proposal 3 covers the left half
    captions = [f"#{i}" for i in range(12)]
    grid = proposal_grid(proposals, image, captions, columns=5, thumb=48)
    cell_w = 48 + 4
    assert grid.width == 5 * cell_w and grid.height % 3 == 0  # 3 rows of 5
    by_score = proposal_grid(proposals, image, captions, sort_by_scores=np.arange(12) == 3, columns=5, thumb=48)
    first_tile = np.asarray(by_score)[2 + 12 : 2 + 36, 2 : 2 + 24].astype(int)  # left half of the first cell
    unsorted_first = np.asarray(grid)[2 + 12 : 2 + 36, 2 : 2 + 24].astype(int)
    assert first_tile.mean() > unsorted_first.mean() + 40  # proposal 3 (bright inside) comes first


def test_proposal_grid_validates_inputs():
    image = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="captions"):
        proposal_grid(np.zeros((2, 4, 4)), image, ["one"])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        proposal_grid(np.zeros((4, 4)), image, [])


def test_proposal_grid_lays_out_100_proposals_in_ten_columns_in_score_order():
    image = Image.new("RGB", (640, 480), (50, 60, 70))
    proposals = np.zeros((100, 120, 160), dtype=np.float32)
    proposals[99, :60] = 1.0  # only the last proposal covers anything
    captions = [f"#{i} label 0.5" for i in range(100)]
    by_score = proposal_grid(proposals, image, captions, sort_by_scores=np.arange(100))
    by_index = proposal_grid(proposals, image, captions)
    assert by_score.size == by_index.size == (10 * 100, 10 * (96 + 12 + 6 + 4))
    columns = by_score.size[0] // 100

    def highlighted(grid: Image.Image, cell: int) -> int:  # pixels of the mask colour in one thumbnail
        x, y = cell % columns * 100, cell // columns * (96 + 12 + 6 + 4)
        pixels = np.asarray(grid.crop((x, y, x + 100, y + 96 + 12 + 6 + 4))).astype(int)
        return int(((pixels[..., 0] > 100) & (pixels[..., 1] < 90)).sum())

    assert highlighted(by_score, 0) > 1000 and highlighted(by_index, 0) == 0  # sorted: #99 (best score) first
    assert highlighted(by_index, 99) > 1000 and highlighted(by_score, 99) == 0


def test_slug_keeps_scripts_and_strips_separators():
    assert slug("red car/../x") == "red_car_x"
    assert slug("\u732b") == "\u732b"
    assert slug("!!!") == "label"


def test_save_outputs_writes_every_file(tmp_path):
    image, semantic = _scene()
    result = SimpleNamespace(
        labels=["sky", "red car", "cat"],
        semantic=semantic,
        p=np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]]),
        p_hat=np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1]]),
        selected=[(0, 0.85), (1, 0.65), (1, 0.1)],
        timings={"text": 0.1, "stage1": 0.2, "stage2": 0.3, "post": 0.01},
    )
    paths = save_outputs(result, image, tmp_path / "out", "photo")
    assert paths["overlay"].is_file() and paths["label_map"].is_file() and paths["json"].is_file()
    assert [p.name for p in paths["masks"]] == [
        "photo_mask_00_sky.png",
        "photo_mask_01_red_car.png",
        "photo_mask_02_cat.png",
    ]
    assert np.asarray(Image.open(paths["masks"][1]))[0, 25] == 255
    assert not np.asarray(Image.open(paths["masks"][2])).any()
    summary = json.loads(paths["json"].read_text())
    assert summary["labels"] == ["sky", "red car", "cat"]
    assert summary["selected"][1] == {
        "label": "red car",
        "proposal": 1,
        "p": 0.7,
        "p_hat": 0.6,
        "p_out": 0.65,
        "pixels": 800,
    }
    assert summary["files"]["label_map_no_label_value"] == 255
    assert summary["files"]["masks"][0] == "photo_mask_00_sky.png"
