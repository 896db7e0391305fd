"""Post-processing cases written out by hand: the flip test's mirror, a cell with one boundary pixel, a
class that wins only at the cell's floor, and which path each size of problem takes (pmp/postprocess.py)."""

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from pmp import postprocess
from pmp.postprocess import argmax_over_classes, semantic_map, upsampled_argmax

OTHERS = -10.0  # the 38 classes that never win; 40 classes keep upsampled_argmax on its fast path


def _reference(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch's own bilinear upsampling, then argmax: what upsampled_argmax must equal."""
    return F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)


def test_the_mirrored_view_of_a_mirrored_image_changes_nothing() -> None:
    # Two classes whose masks cover different corners: the maps are asymmetric both ways, so mirroring
    # them back along the wrong axis, or subtracting the views, moves the argmax.
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])  # (N=2 queries, K=2)
    logits = torch.full((2, 4, 4), -6.0)
    logits[0, :2, :2] = 6.0  # query 0 (class 0): top left
    logits[1, 1:, 1:] = 6.0  # query 1 (class 1): bottom right, overlapping
    plain = semantic_map(scores, logits, (8, 8))
    mirrored = semantic_map(scores, logits, (8, 8), mirrored=(scores, logits.flip(-1)))
    assert torch.equal(mirrored, plain)
    assert plain[0, 0] == 0 and plain[-1, -1] == 1


def test_a_single_boundary_pixel_is_interpolated() -> None:
    maps = torch.full((40, 1, 3), OTHERS)
    maps[0] = torch.tensor([[10.0, 10.0, 0.0]])
    maps[1] = torch.tensor([[0.0, 0.0, 5.0]])
    # Output x = 1 reads source 1.75: class 0 gets 0.25 * 10 = 2.5, class 1 gets 0.75 * 5 = 3.75.
    expected = torch.tensor([[0, 1]])
    assert torch.equal(_reference(maps, (1, 2)), expected)
    assert torch.equal(upsampled_argmax(maps, (1, 2)), expected)


def test_a_class_flat_at_the_cells_floor_still_wins_where_the_other_dips() -> None:
    maps = torch.full((40, 4, 3), OTHERS)
    maps[0] = 5.0  # flat: its best corner equals the floor of the top cells
    maps[1] = 4.0
    maps[1, 0] = 6.0  # above class 0 on the first row only
    # Output rows read source rows 0, 0.25, 0.75, 1.25, ...: class 1 gives 6, 5.5, 4.5, 4, ... against 5.
    expected = torch.zeros(8, 6, dtype=torch.int64)
    expected[:2] = 1
    assert torch.equal(_reference(maps, (8, 6)), expected)
    assert torch.equal(upsampled_argmax(maps, (8, 6)), expected)


def _two_halves(num_classes: int) -> torch.Tensor:
    """(K, 8, 8) maps: class 0 is 1 on the left four columns, class 1 on the right four, 0 elsewhere, the rest
    at OTHERS. Upsampled to 16 x 16, the 8 cells of column 3 are the only unresolved ones, each with classes 0
    and 1 as candidates, and output columns 7 and 8 (sources 3.25, 3.75) read them: 32 boundary pixels."""
    maps = torch.full((num_classes, 8, 8), OTHERS)
    maps[:2] = 0.0
    maps[0, :, :4], maps[1, :, 4:] = 1.0, 1.0
    return maps


def _takes_the_plain_path(monkeypatch: pytest.MonkeyPatch, maps: torch.Tensor, size: tuple[int, int]) -> bool:
    """Whether upsampled_argmax upsampled every map (the plain path); either way it must equal the reference."""
    calls, upsample = [], postprocess.upsample
    monkeypatch.setattr(postprocess, "upsample", lambda *args: calls.append(args) or upsample(*args))
    got = upsampled_argmax(maps, size)
    assert torch.equal(got, _reference(maps, size))
    return bool(calls)


def test_few_classes_or_no_resize_take_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to 24 classes upsampling everything is as fast; at the maps' own size there is nothing to save."""
    assert _takes_the_plain_path(monkeypatch, _two_halves(24), (16, 16))
    assert not _takes_the_plain_path(monkeypatch, _two_halves(25), (16, 16))
    assert _takes_the_plain_path(monkeypatch, _two_halves(40), (8, 8))


def test_the_plain_path_starts_where_boundary_work_passes_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """Boundary work = candidates summed over boundary pixels + 4 per pixel = 2 * 32 + 4 * 32 = 192; the plain
    path is taken when that is more than the share of K * H * W = 32 * 256 (exact binary fractions)."""
    maps = _two_halves(32)
    assert not _takes_the_plain_path(monkeypatch, maps, (16, 16))  # the shipped share, 0.1: 819.2
    for share, plain in ((3 / 128, False), (3 / 256, True)):  # 192 is not more than 192; it is more than 96
        monkeypatch.setattr(postprocess, "_PLAIN_UPSAMPLE_SHARE", share)
        assert _takes_the_plain_path(monkeypatch, maps, (16, 16)) is plain


class _Recorded(torch.Tensor):
    """A tensor that notes the torch functions called on it."""

    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        cls.calls.append(getattr(func, "__name__", ""))
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("num_classes, running", [(32, False), (33, True)])
def test_from_33_classes_the_argmax_is_a_running_maximum(num_classes: int, running: bool) -> None:
    """max(0) up to 32 classes, a running maximum (torch.where per class) above; the first maximum either way."""
    scores = torch.zeros(num_classes, 5)
    scores[[3, 7], 2] = 1.0  # a tie: the first class wins
    scores[num_classes - 1, 4] = 2.0
    _Recorded.calls = []
    index = argmax_over_classes(scores.as_subclass(_Recorded))
    assert index.tolist() == [0, 0, 3, 0, num_classes - 1]
    assert ("where" in _Recorded.calls) is running and ("max" in _Recorded.calls) is not running
