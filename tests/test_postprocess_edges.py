"""Post-processing cases written out by hand: the flip test's mirror, a cell with one boundary pixel, a
class that wins only at the cell's floor (pmp/postprocess.py)."""

import torch
import torch.nn.functional as F

from pmp.postprocess import semantic_map, upsampled_argmax

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
