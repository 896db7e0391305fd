"""FC-CLIP's training recipe: its values against FC-CLIP's configs read by hand, large-scale jitter,
detectron2's multi-step schedule, FC-CLIP's evaluation size, and every trainable parameter learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pmp.images import model_input_size
from pmp.segmenter import Segmenter
from tests.test_fcclip import tiny_fcclip
from train.augment import LargeScaleJitter
from train.losses import SetCriterion
from train.matcher import HungarianMatcher
from train.recipes import get_recipe
from train.runtime import warmup_multistep_lr_factor
from train.train_segmenter import _to_float


def test_fcclips_values_as_its_configs_give_them():
    """configs/coco/panoptic-segmentation/{Base-COCO-PanopticSegmentation, maskformer2_R50_bs16_50ep}.yaml and
    fcclip/fcclip_convnext_large_eval_ade20k.yaml, read by hand."""
    r = get_recipe("fcclip-convnextl-pmp")
    assert (r.batch_size, r.lr, r.steps, r.lr_steps, r.weight_decay) == (16, 1e-4, 368_750, (327_778, 355_092), 0.05)
    assert (r.warmup_steps, r.warmup_factor, r.clip_grad_norm, r.crop_size, r.lsj_scale) == (
        10,
        1.0,
        0.01,
        1024,
        (0.1, 2.0),
    )
    assert (r.class_weight, r.mask_weight, r.dice_weight, r.no_object_weight) == (2.0, 5.0, 5.0, 0.1)
    m = r.model
    assert (m.clip.model_name, m.clip.pretrained) == ("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup")
    assert (m.decoder.num_queries, m.decoder.num_layers, m.decoder.hidden_dim, m.decoder.dropout) == (250, 9, 256, 0.0)
    assert (m.pixel_decoder.kind, m.pixel_decoder.num_layers, m.backbone.kind) == ("msdeform", 6, "clip")
    assert m.decoder.class_head_mask_pooling and (m.decoder.class_head_layers, m.decoder.class_head_hidden_dim) == (
        3,
        256,
    )
    assert m.pixel_mean == pytest.approx((122.7709383 / 255, 116.7460125 / 255, 104.09373615 / 255))
    assert (m.pool_form, m.ensemble, m.clip_weight, m.clip_weight_unseen) == ("fcclip", "odise", 0.4, 0.8)
    assert r.data == "coco133" and "person" in m.training_names and len(m.clip.templates) == 14


def test_detectron2s_multistep_schedule_by_hand():
    steps = (327_778, 355_092)
    assert warmup_multistep_lr_factor(0, steps, 0.1, 10, 1.0) == 1.0
    assert warmup_multistep_lr_factor(327_777, steps, 0.1, 10, 1.0) == 1.0
    assert warmup_multistep_lr_factor(327_778, steps, 0.1, 10, 1.0) == pytest.approx(0.1)
    assert warmup_multistep_lr_factor(360_000, steps, 0.1, 10, 1.0) == pytest.approx(0.01)
    assert warmup_multistep_lr_factor(5, steps, 0.1, 10, 0.001) == pytest.approx(0.001 * 0.5 + 0.5)


def test_large_scale_jitter_flips_scales_into_the_square_then_crops_and_pads():
    """Draws in detectron2's order (flip, scale, crop offsets), replayed from the same seed by hand."""
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :100] = 255  # left half white
    label = np.zeros((100, 200), np.int64)
    label[:, 100:] = 7  # right half class 7
    for seed in range(6):
        out_image, out_label = LargeScaleJitter(64)(image, label, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        flipped = rng.random() < 0.5
        target = rng.uniform(0.1, 2.0) * 64
        scale = min(target / 100, target / 200)
        height, width = round(100 * scale), round(200 * scale)
        top = round(max(height - 64, 0) * rng.uniform())
        left = round(max(width - 64, 0) * rng.uniform())
        assert out_image.shape == (64, 64, 3) and out_label.shape == (64, 64)
        shown_h, shown_w = min(height - top, 64), min(width - left, 64)
        assert (out_label[shown_h:] == -1).all() and (out_label[:, shown_w:] == -1).all()  # padding: ignored
        assert (out_image[shown_h:] == 128).all() and (out_image[:, shown_w:] == 128).all()  # and grey
        # the first shown column is class 7 exactly when it lies in the (possibly flipped) right half
        source_column = (left + 0.5) / width * 200
        right_half = source_column >= 100 if not flipped else source_column < 100
        assert (out_label[0, 0] == 7) == right_half, seed


@pytest.mark.parametrize("size, expected", [((500, 375), (1067, 800)), ((2100, 300), (1333, 190))])
def test_fcclips_evaluation_size_is_detectron2s_default(size, expected):
    """MIN_SIZE_TEST 800 with MAX_SIZE_TEST 1333: the shorter side to 800 unless the longer passes 1333."""
    assert model_input_size(*size, 800, "detectron2") == expected


def test_every_trainable_parameter_of_fcclip_learns():
    """Its mask-pooled class head included: DDP runs without find_unused_parameters."""
    torch.manual_seed(0)
    model = Segmenter(tiny_fcclip("pmp")).proposal_model.train()
    outputs = model(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32), torch.tensor([[1, 1, 1], [1, 1, 0]]).bool())
    targets = [
        {"labels": torch.tensor([0, 2]), "masks": torch.rand(2, 64, 64) > 0.5},
        {"labels": torch.tensor([1]), "masks": torch.rand(1, 64, 64) > 0.5},
    ]
    criterion = SetCriterion(HungarianMatcher())
    criterion.total_loss(criterion(_to_float(outputs), targets)).backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused and model.class_head.mask_pooling_proj[1].weight.grad.abs().sum() > 0
