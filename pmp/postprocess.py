"""Post-processing: Mask2Former's semantic inference, and an exact, fast argmax of its upsampled maps.

Adapted from Mask2Former's ``semantic_inference`` (``maskformer_model.py``): the class map of a pixel is
sum_q p_out[q, k] * sigmoid(M_q)(x, y), and every pixel takes the argmax over k, as Mask2Former and
OVSeg report their numbers. The K class maps are computed at mask resolution; :func:`upsampled_argmax`
finds the argmax of their bilinear upsampling without materialising K full-size maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to (B, C, H, W)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def semantic_inference(scores: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Mask2Former's semantic inference: (N, K) scores, (N, h, w) mask logits -> (K, h, w) class maps."""
    return torch.einsum("nk,nhw->khw", scores, mask_logits.sigmoid())


def semantic_map(
    scores: torch.Tensor,
    mask_logits: torch.Tensor,
    size: tuple[int, int],
    *,
    mirrored: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(N, K) scores, (N, h, w) mask logits -> (H, W) class ids: :func:`semantic_inference`, then the
    argmax of its bilinear upsampling to ``size`` (:func:`upsampled_argmax`).

    ``mirrored``: the (scores, mask logits) of the same image mirrored left to right (the flip test).
    Its class maps are mirrored back and added before the argmax, as mmsegmentation's flip test averages
    the class scores of both views (``EncoderDecoder.aug_test``). Bilinear upsampling with
    ``align_corners=False`` is symmetric, so mirroring at mask resolution equals mirroring at image size.
    """
    maps = semantic_inference(scores, mask_logits)  # (K, h, w)
    if mirrored is not None:
        maps = maps + semantic_inference(*mirrored).flip(-1)
    return upsampled_argmax(maps, size)


def _bilinear_taps(
    size_in: int, size_out: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices i0, i1 and weights w0, w1 of each output position along one axis, exactly as
    ``F.interpolate(mode="bilinear", align_corners=False)`` computes them for a given output size."""
    scale = size_in / size_out
    source = ((torch.arange(size_out, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0.0)
    # Truncation is floor for source >= 0, and never past the last index: the last source position is
    # size_in - (scale + 1) / 2, half a pixel or more below size_in.
    first = source.to(torch.int64)
    second = (first + 1).clamp_max(size_in - 1)
    w1 = source - first
    return first, second, 1.0 - w1, w1


# Post-processing path choices, measured on CPU (benchmarks/README.md).
_PLAIN_MAX_CLASSES = 24  # up to this many classes the plain upsample + argmax is as fast (measured on CPU)
_PLAIN_UPSAMPLE_SHARE = 0.1  # boundary work (pixels x candidates) above this share of K*H*W: plain upsample
_NOISY_SHARE = 0.6  # more boundary pixels than this share of the image: plain upsample (trained models: ~5-30%)
_RUNNING_MAX_FROM = 32  # classes: from here on a running maximum beats max(0) on CPU
_CANDIDATE_BUCKETS = (2, 4, 8, 16, 32, 64, 128, 256, 1 << 62)  # upper candidate counts of the cell buckets


def argmax_over_classes(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(0)`` for (K, ...) scores, first index on ties, without a slow strided reduction.

    On CPU ``argmax(0)`` over a leading dimension is several times slower than ``max(0)``, and for many
    classes a running maximum over contiguous class slices is faster still.
    """
    if scores.shape[0] <= _RUNNING_MAX_FROM:
        return scores.max(0).indices
    best, index = scores[0].clone(), torch.zeros(scores.shape[1:], dtype=torch.int64, device=scores.device)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best  # strict: the first maximal class keeps ties
        best = torch.where(better, scores[k], best)
        index.masked_fill_(better, k)
    return index


def upsampled_argmax(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``upsample(maps[None], size)[0].argmax(0)`` for (K, h, w) maps, without the (K, H, W) tensor.

    Every output pixel is a convex combination of the 4 corners of one source cell (a 2x2 block).
    * Where the 4 corners share one argmax, that class wins the whole cell: a weighted sum of
      inequalities that all favour it.
    * Elsewhere (class boundaries) only classes whose best corner reaches the cell's floor - the
      largest worst-corner score of any class - can win, since some class scores at least the floor
      everywhere in the cell: typically a few of K. Only those are interpolated per pixel, with the
      same taps, weights and order of operations as ``F.interpolate``.
    The result equals the reference up to float rounding at exact ties. Cost: O(K*h*w + H*W + C*boundary
    pixels) instead of O(K*H*W) time and memory. Few classes or noise-like maps use the plain path
    (upsample, then :func:`argmax_over_classes`), which is as fast there.
    """
    num_classes, height, width = maps.shape
    if (height, width) == tuple(size) or num_classes <= _PLAIN_MAX_CLASSES:
        return argmax_over_classes(upsample(maps[None], size)[0])  # few classes: the plain path is as cheap
    y0, y1, wy0, wy1 = _bilinear_taps(height, size[0], maps.device)
    x0, x1, wx0, wx1 = _bilinear_taps(width, size[1], maps.device)
    down = (torch.arange(height, device=maps.device) + 1).clamp_max(height - 1)
    right = (torch.arange(width, device=maps.device) + 1).clamp_max(width - 1)
    best = argmax_over_classes(maps)  # (h, w)
    best_down = best[down]
    resolved = (best == best[:, right]) & (best == best_down) & (best == best_down[:, right])  # (h, w) per cell
    result = best[y0][:, x0]  # (H, W) right wherever the pixel's cell is resolved
    boundary = (~resolved)[y0][:, x0]  # (H, W)
    num_boundary = int(boundary.sum())
    if num_boundary == 0:
        return result
    if num_boundary > _NOISY_SHARE * boundary.numel():
        return argmax_over_classes(upsample(maps[None], size)[0])  # noise-like maps: the plain path is cheaper

    cells = torch.nonzero(~resolved.flatten()).flatten()  # (U,) flat ids of the unresolved cells
    rows, cols = cells // width, cells % width
    flat = maps.flatten(1)  # (K, h*w)
    corner_values = flat[
        :,
        torch.stack(
            [
                rows * width + cols,
                rows * width + right[cols],
                down[rows] * width + cols,
                down[rows] * width + right[cols],
            ]
        ),
    ]  # (K, 4, U)
    highest = corner_values.amax(1)  # (K, U)
    candidate = highest >= corner_values.amin(1).amax(0)  # reaches the cell's floor: may win somewhere in it
    counts = candidate.sum(0)  # (U,)
    ranked = highest.masked_fill(~candidate, float("-inf"))
    slot = torch.empty(height * width, dtype=torch.int64, device=maps.device)  # read only at unresolved cells
    slot[cells] = torch.arange(cells.numel(), device=maps.device)
    ys, xs = torch.nonzero(boundary, as_tuple=True)
    pixel_cell = slot[y0[ys] * width + x0[xs]]  # (P,) index into the unresolved cells
    if int(counts[pixel_cell].sum()) + 4 * num_boundary > _PLAIN_UPSAMPLE_SHARE * result.numel() * num_classes:
        return argmax_over_classes(upsample(maps[None], size)[0])  # too many candidates: plain path is cheaper
    # Cells are bucketed by candidate count so that a few crowded cells do not pad every other one.
    low = 0
    for high in _CANDIDATE_BUCKETS:
        in_bucket = (counts > low) & (counts <= high)  # (U,)
        low = high
        if not bool(in_bucket.any()):
            continue
        bucket_cells = torch.nonzero(in_bucket).flatten()
        num_candidates = min(int(counts[bucket_cells].max()), num_classes)
        # (C, cells) candidate classes, ascending so that argmax resolves ties like the reference; cells
        # with fewer candidates are padded with classes that cannot win
        cell_classes = ranked[:, bucket_cells].topk(num_candidates, dim=0).indices.sort(dim=0).values
        position = torch.empty_like(counts)  # read only at this bucket's cells
        position[bucket_cells] = torch.arange(bucket_cells.numel(), device=maps.device)
        pixels = torch.nonzero(in_bucket[pixel_cell]).flatten()
        py, px = ys[pixels], xs[pixels]
        classes = cell_classes[:, position[pixel_cell[pixels]]]  # (C, P_bucket)
        row0, row1, col0, col1 = y0[py] * width, y1[py] * width, x0[px], x1[px]
        upper = flat[classes, row0 + col0] * wx0[px] + flat[classes, row0 + col1] * wx1[px]  # F.interpolate's order
        lower = flat[classes, row1 + col0] * wx0[px] + flat[classes, row1 + col1] * wx1[px]
        winner = argmax_over_classes(upper * wy0[py] + lower * wy1[py])  # (P_bucket,)
        result[py, px] = classes.gather(0, winner[None])[0]
    return result
