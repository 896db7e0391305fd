"""pmp.modeling.ms_deform_attn.ms_deform_attn against a hand-written bilinear sampler (Deformable DETR semantics)."""

import math

import pytest
import torch

from pmp.modeling.ms_deform_attn import ms_deform_attn


def _bilinear(feature: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample feature (H, W, D) at normalised (x, y); pixel (i, j) has its centre at ((j+.5)/W, (i+.5)/H);
    zeros outside."""
    height, width, depth = feature.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    result = torch.zeros(depth, dtype=feature.dtype)
    for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yi < height and 0 <= xi < width:
                result += wy * wx * feature[yi, xi]
    return result


def _naive_ms_deform_attn(value, spatial_shapes, locations, weights) -> torch.Tensor:
    batch, _, heads, depth = value.shape
    _, num_queries, _, num_levels, num_points, _ = locations.shape
    starts = [0]
    for height, width in spatial_shapes.tolist():
        starts.append(starts[-1] + height * width)
    out = torch.zeros(batch, num_queries, heads, depth, dtype=value.dtype)
    for b in range(batch):
        for q in range(num_queries):
            for h in range(heads):
                for level, (height, width) in enumerate(spatial_shapes.tolist()):
                    feature = value[b, starts[level] : starts[level + 1], h].reshape(height, width, depth)
                    for p in range(num_points):
                        x, y = locations[b, q, h, level, p].tolist()
                        out[b, q, h] += weights[b, q, h, level, p] * _bilinear(feature, x, y)
    return out.reshape(batch, num_queries, heads * depth)


def _random_inputs(batch=2, queries=4, heads=2, depth=3, shapes=((4, 5), (2, 3)), points=2):
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    total = sum(h * w for h, w in shapes)
    value = torch.randn(batch, total, heads, depth, dtype=torch.float64)
    # a margin outside [0, 1] exercises the zero padding at the borders
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, dtype=torch.float64) * 1.3 - 0.15
    weights = torch.rand(batch, queries, heads, len(shapes), points, dtype=torch.float64)
    weights = weights / weights.flatten(-2).sum(-1)[..., None, None]
    return value, spatial_shapes, locations, weights


def test_matches_naive_bilinear_loop():
    value, shapes, locations, weights = _random_inputs()
    out = ms_deform_attn(value, shapes, locations, weights)
    assert out.shape == (2, 4, 2 * 3)
    torch.testing.assert_close(out, _naive_ms_deform_attn(value, shapes, locations, weights), rtol=1e-10, atol=1e-10)


def test_pixel_centre_returns_that_pixel():
    """A location on a pixel centre with weight 1 reads exactly that pixel (the align_corners=False convention)."""
    height, width = 3, 4
    value = torch.arange(height * width, dtype=torch.float64).reshape(1, height * width, 1, 1)
    row, col = 1, 2
    location = torch.tensor([(col + 0.5) / width, (row + 0.5) / height], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    weights = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn(value, torch.tensor([[height, width]]), location, weights)
    assert out.item() == pytest.approx(row * width + col)


def test_rejects_mismatched_spatial_shapes():
    value, shapes, locations, weights = _random_inputs()
    with pytest.raises(ValueError, match="positions"):
        ms_deform_attn(value[:, :-1], shapes, locations, weights)
