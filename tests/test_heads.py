"""Eq. 1's class head and the mask branch on inputs small enough to compute by hand (pmp/modeling/heads.py)."""

import torch

from pmp.modeling.heads import MaskHead, OpenVocabClassHead, binary_mask_pool
from tests.messages import raises_exactly


def test_a_fixed_temperature_multiplies_the_cosine() -> None:
    # OVSeg's get_sim_logits: 100 x cosine. With proj the identity, query (3, 4) has cosine 3/5 with prompt
    # (1, 0) and 4/5 with (0, 1); padded prompts get -inf; the no-object column is the last.
    head = OpenVocabClassHead(2, 2, fixed_scale=100.0)
    with torch.no_grad():
        head.proj.weight.copy_(torch.eye(2))
        head.proj.bias.zero_()
        head.no_object_embed.copy_(torch.tensor([0.0, -2.0]))
    logits = head(torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]),
                  torch.tensor([[True, True, False]]))  # fmt: skip
    expected = torch.tensor([[[60.0, 80.0, float("-inf"), -80.0]]])
    torch.testing.assert_close(logits, expected)


def test_the_default_projection_is_one_linear_layer_and_the_mlp_is_1024_wide() -> None:
    assert isinstance(OpenVocabClassHead(8, 4).proj, torch.nn.Linear)
    mlp = OpenVocabClassHead(8, 4, layers=2).proj
    assert [layer.out_features for layer in mlp.layers] == [1024, 4]


def test_the_no_object_embedding_starts_at_about_unit_norm() -> None:
    # The size of a unit text embedding, so that its first optimiser steps are on the same scale.
    torch.manual_seed(0)
    norm = OpenVocabClassHead(8, 512).no_object_embed.norm().item()
    assert 0.9 < norm < 1.1  # randn(512) / sqrt(512): 1 +- 0.03 (one standard deviation)


def test_mask_pooling_needs_both_masks_and_features() -> None:
    head = OpenVocabClassHead(4, 4, mask_pooling_dim=4)
    message = "this class head pools the mask features: pass masks and mask_features"
    for masks, features in ((torch.zeros(1, 1, 2, 2), None), (None, torch.zeros(1, 4, 2, 2))):
        with raises_exactly(message):
            head(torch.zeros(1, 1, 4), torch.ones(1, 1, 4), torch.ones(1, 1, dtype=torch.bool), masks, features)


def test_binary_mask_pool_counts_only_cells_strictly_above_zero() -> None:
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (B=1, C=1, 2, 2)
    mask_logits = torch.tensor([[[[5.0, 0.0], [-1.0, 2.0]], [[-1.0, -1.0], [-1.0, -1.0]]]])  # (1, P=2, 2, 2)
    # Mask 0 holds the cells with 1 and 4 (its logit 0 is outside): mean 2.5; mask 1 is empty: 0.
    torch.testing.assert_close(binary_mask_pool(features, mask_logits), torch.tensor([[[2.5], [0.0]]]))


def test_mask_embedding_is_mask2formers_three_layer_mlp() -> None:
    # mask2former_transformer_decoder.py: self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
    head = MaskHead(8, 6)
    assert [(layer.in_features, layer.out_features) for layer in head.mask_embed.layers] == [(8, 8), (8, 8), (8, 6)]
