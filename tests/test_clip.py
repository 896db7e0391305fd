"""pmp.clip: text embeddings (truncation, templates, cache), dense features, mask pooling, masked crops,
and weight loading without downloads. Tiny randomly initialised CLIPs keep this fast on CPU."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pmp.clip import CLIPModel, resolve_pretrained_tag
from pmp.config import CROP_VIEWS, CLIPConfig, tiny_clip_model_cfg
from pmp.stage2 import crop_classify, masked_crops, pool_classify
from tests.tiny import tiny_vit_model_cfg

TEMPLATES = ("a photo of a {}.", "{} in the picture")


@pytest.fixture(scope="module")
def resnet_clip() -> CLIPModel:
    torch.manual_seed(1)
    return CLIPModel.build(CLIPConfig(model_cfg=tiny_clip_model_cfg(), templates=TEMPLATES))


def fresh_resnet_clip(**overrides) -> CLIPModel:
    return CLIPModel.build(CLIPConfig(model_cfg=tiny_clip_model_cfg(), **overrides))


# ---------------------------------------------------------------------------------------------- build


def test_build_attributes(resnet_clip: CLIPModel) -> None:
    assert resnet_clip.embed_dim == 128
    assert resnet_clip.image_size == 128
    assert resnet_clip.context_length == 32
    assert resnet_clip.tokenizer.context_length == 32
    assert resnet_clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert all(key.startswith("open_clip.") for key in resnet_clip.state_dict())
    assert torch.allclose(resnet_clip.logit_scale, resnet_clip.open_clip.logit_scale.exp())


def test_build_named_open_clip_model() -> None:
    clip = CLIPModel.build(CLIPConfig(model_name="ViT-S-32-alt"))
    assert (clip.embed_dim, clip.image_size, clip.context_length) == (256, 224, 77)
    assert not clip.open_clip.training
    with pytest.raises(ValueError, match="unknown open_clip model name"):
        CLIPModel.build(CLIPConfig(model_name="ViT-Nope"))
    with pytest.raises(ValueError, match="hf-hub"):
        CLIPModel.build(CLIPConfig(model_name="hf-hub:org/repo"))


def test_templates_need_one_placeholder() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        fresh_resnet_clip(templates=("a photo",))


# ----------------------------------------------------------------------------------------------- text


def test_truncated_text_forward_equals_open_clip(resnet_clip: CLIPModel) -> None:
    # "!" is token id 0, the pad id: the real length must still count it.
    texts = ["a photo of a dog.", "sky", "wow! a very long description of a red car parked outside"]
    tokens = resnet_clip.tokenizer(texts)
    seen_lengths = []
    hook = resnet_clip.open_clip.transformer.register_forward_pre_hook(
        lambda m, args: seen_lengths.append(args[0].shape[1])
    )
    try:
        with torch.no_grad():
            truncated = resnet_clip.text_forward(tokens)
            padded = resnet_clip.open_clip.encode_text(tokens)
    finally:
        hook.remove()
    longest = max(resnet_clip.count_tokens(t) for t in texts)
    assert seen_lengths == [longest, 32]  # ours ran on the longest prompt only, open_clip on all 32
    assert truncated.shape == (3, 128)
    torch.testing.assert_close(truncated, padded, atol=1e-5, rtol=1e-5)


def test_custom_text_tower_falls_back_to_full_length() -> None:
    clip = CLIPModel.build(CLIPConfig(model_cfg={**tiny_vit_model_cfg(), "custom_text": True}))
    assert not clip._can_truncate()
    with torch.no_grad():
        ours = clip.encode_text(["sky", "red car"])
        expected = F.normalize(
            clip.open_clip.encode_text(clip.tokenizer(["a photo of a sky.", "a photo of a red car."])), dim=-1
        )
    torch.testing.assert_close(ours, expected)


def test_prompt_longer_than_context_is_rejected(resnet_clip: CLIPModel) -> None:
    label = " ".join(["word"] * 40)
    with pytest.raises(ValueError, match=r"too long.*at most 32"):
        with torch.no_grad():
            resnet_clip.encode_text([label])


def test_single_string_is_rejected(resnet_clip: CLIPModel) -> None:
    with pytest.raises(ValueError, match="list"):
        resnet_clip.encode_text("sky")


def test_template_averaging_matches_hand_computation(resnet_clip: CLIPModel) -> None:
    labels = ["dog", "red car", "sky"]
    with torch.no_grad():
        ours = resnet_clip.encode_text(labels)
        expected = []
        for label in labels:
            tokens = resnet_clip.tokenizer([t.replace("{}", label) for t in TEMPLATES])
            per_template = F.normalize(resnet_clip.open_clip.encode_text(tokens), dim=-1)  # (T, C)
            expected.append(F.normalize(per_template.mean(0), dim=0))
    torch.testing.assert_close(ours, torch.stack(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(3))


def test_cache_hits_and_equals_uncached(resnet_clip: CLIPModel) -> None:
    resnet_clip.clear_cache()
    labels = ["house", "tree", "house"]
    with torch.no_grad():
        first = resnet_clip.encode_text(labels)
        assert resnet_clip.cache_info() == {"hits": 0, "misses": 2, "size": 2, "max_size": 4096}
        second = resnet_clip.encode_text(["tree", "house"])
        assert resnet_clip.cache_info()["hits"] == 2
    uncached = resnet_clip.encode_text(labels)  # grad enabled + trainable text tower: cache bypassed
    assert uncached.requires_grad and resnet_clip.cache_info()["size"] == 2
    torch.testing.assert_close(first[0], first[2])
    torch.testing.assert_close(second, first[[1, 0]])
    torch.testing.assert_close(first, uncached.detach(), atol=1e-6, rtol=1e-6)


def test_cache_is_bounded_lru() -> None:
    clip = fresh_resnet_clip(text_cache_size=3)
    with torch.no_grad():
        clip.encode_text(["a", "b", "c"])
        clip.encode_text(["a"])  # touch "a": "b" is now the least recently used
        clip.encode_text(["d", "e"])  # evicts "b" then "c"
        assert clip.cache_info()["size"] == 3
        before = clip.cache_info()
        clip.encode_text(["a", "d", "e"])
        assert clip.cache_info()["hits"] == before["hits"] + 3
        clip.encode_text(["b"])
        assert clip.cache_info()["misses"] == before["misses"] + 1
        assert clip.cache_info()["size"] == 3


def test_cache_follows_weight_changes() -> None:
    clip = fresh_resnet_clip()
    with torch.no_grad():
        before = clip.encode_text(["boat"])
        clip.open_clip.ln_final.bias.add_(0.5)  # an in-place update, as an optimizer step makes
        after_step = clip.encode_text(["boat"])
        state = copy.deepcopy(clip.state_dict())
        state["open_clip.text_projection"] = state["open_clip.text_projection"].flip(1)
        clip.load_state_dict(state)
        after_load = clip.encode_text(["boat"])
    assert clip.cache_info()["hits"] == 0 and clip.cache_info()["misses"] == 3
    assert not torch.allclose(before, after_step)
    assert not torch.allclose(after_step, after_load)


def test_inference_mode_entries_work_with_autograd_later() -> None:
    clip = fresh_resnet_clip()
    clip.requires_grad_(False)
    with torch.inference_mode():
        clip.encode_text(["cat"])
    text = clip.encode_text(["cat"])  # a cache hit, outside inference mode
    assert clip.cache_info()["hits"] == 1
    weight = torch.ones(128, requires_grad=True)
    (text * weight).sum().backward()  # would fail on an inference tensor
    assert weight.grad is not None


# -------------------------------------------------------------------------------------- dense features


@pytest.mark.parametrize("size, grid", [(128, 4), (96, 3)])
def test_resnet_dense_features_shape(resnet_clip: CLIPModel, size: int, grid: int) -> None:
    with torch.no_grad():
        dense = resnet_clip.dense_features(torch.randn(2, 3, size, size))
    assert dense.shape == (2, 128, grid, grid)
    torch.testing.assert_close(dense.norm(dim=1), torch.ones(2, grid, grid))


def test_resnet_dense_features_are_the_attnpool_value_path() -> None:
    # With uniform attention (zero query projection) and no positional embedding, the attention pool
    # returns c_proj(v_proj(mean of positions)) = the mean of the unnormalised dense features.
    clip = fresh_resnet_clip()
    pool = clip.open_clip.visual.attnpool
    with torch.no_grad():
        pool.q_proj.weight.zero_()
        pool.q_proj.bias.zero_()
        pool.positional_embedding.zero_()
        images = torch.randn(2, 3, 128, 128)
        dense = CLIPModel._dense_resnet(clip.open_clip.visual, images)
        pooled = clip.open_clip.encode_image(images)
    torch.testing.assert_close(dense.mean(dim=(2, 3)), pooled, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size, grid", [(64, 4), (96, 6)])
def test_vit_dense_features_shape(vit_clip: CLIPModel, size: int, grid: int) -> None:
    with torch.no_grad():
        images = torch.randn(2, 3, size, size)
        dense = vit_clip.dense_features(images)
        single = vit_clip.dense_features(images[1:])
    assert dense.shape == (2, 64, grid, grid)
    torch.testing.assert_close(dense.norm(dim=1), torch.ones(2, grid, grid))
    torch.testing.assert_close(dense[1:], single, atol=1e-5, rtol=1e-5)  # no mixing across the batch


def test_vit_dense_features_equal_global_embedding_on_identical_tokens() -> None:
    # When every token is identical, attending to all tokens equals attending to oneself, so the
    # value path must reproduce the global image embedding at every patch.
    torch.manual_seed(3)
    clip = CLIPModel.build(CLIPConfig(model_cfg=tiny_vit_model_cfg()))
    visual = clip.open_clip.visual
    image = torch.full((1, 3, 64, 64), 0.3)
    with torch.no_grad():
        visual.positional_embedding.zero_()
        visual.class_embedding.copy_(visual.conv1(image)[0, :, 0, 0])
        dense = clip.dense_features(image)  # (1, C, 4, 4)
        pooled = F.normalize(clip.open_clip.encode_image(image), dim=-1)  # (1, C)
    torch.testing.assert_close(dense, pooled[:, :, None, None].expand_as(dense), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------- pool_classify


def test_pool_classify_hand_case(resnet_clip: CLIPModel) -> None:
    torch.manual_seed(4)
    feature = F.normalize(torch.randn(128), dim=0)
    dense = F.normalize(torch.randn(2, 128, 4, 4), dim=1)
    dense[0, :, :2, :2] = feature[:, None, None]  # a region of constant feature
    text = F.normalize(torch.randn(5, 128), dim=-1)
    masks = torch.zeros(2, 3, 4, 4)
    masks[0, 0, :2, :2] = 1.0  # exactly the constant region
    masks[:, 1] = 1.0  # everything
    masks[1, 2, 3, 3] = 0.7  # one soft pixel; masks[0, 2] stays empty
    with torch.no_grad():
        probs = pool_classify(resnet_clip, dense, masks, text)
    scale = resnet_clip.logit_scale.detach()
    assert probs.shape == (2, 3, 5)
    torch.testing.assert_close(probs[0, 0], (scale * feature @ text.T).softmax(-1))
    mean_feature = F.normalize(dense[1].mean(dim=(1, 2)), dim=0)
    torch.testing.assert_close(probs[1, 1], (scale * mean_feature @ text.T).softmax(-1))
    torch.testing.assert_close(probs[1, 2], (scale * dense[1, :, 3, 3] @ text.T).softmax(-1))
    torch.testing.assert_close(probs[0, 2], torch.full((5,), 0.2))  # empty mask: uniform


def test_pool_classify_resizes_masks(resnet_clip: CLIPModel) -> None:
    dense = F.normalize(torch.randn(1, 128, 4, 4), dim=1)
    text = F.normalize(torch.randn(3, 128), dim=-1)
    small = torch.zeros(1, 1, 4, 4)
    small[..., :2, :] = 1.0
    big = torch.zeros(1, 1, 32, 32)
    big[..., :16, :] = 1.0  # the same region at 8x resolution: upper half
    tiny = torch.zeros(1, 1, 32, 32)
    tiny[..., 9, 30] = 1.0  # one pixel inside dense cell (1, 3)
    with torch.no_grad():
        from_small = pool_classify(resnet_clip, dense, small, text)
        from_big = pool_classify(resnet_clip, dense, big, text)
        from_tiny = pool_classify(resnet_clip, dense, tiny, text)
        expected_tiny = (resnet_clip.logit_scale * dense[0, :, 1, 3] @ text.T).softmax(-1)
        full = pool_classify(resnet_clip, dense, torch.ones(1, 1, 64, 64), text)
        expected_full = (resnet_clip.logit_scale * F.normalize(dense.mean(dim=(2, 3)), dim=-1) @ text.T).softmax(-1)
    # Shrinking averages areas: a mask aligned with the dense grid pools exactly as at grid resolution,
    # and a one-pixel mask still selects the cell it lies in.
    torch.testing.assert_close(from_big, from_small)
    torch.testing.assert_close(from_tiny[0, 0], expected_tiny)
    torch.testing.assert_close(full[0], expected_full)


# ----------------------------------------------------------------------------------------- crop_classify


def _image_and_masks(size: int = 128) -> tuple[np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    masks = torch.zeros(4, size, size)
    masks[0] = 1.0  # the whole image
    masks[1, :, : size // 2] = 1.0  # the left half
    masks[2, 20:50, 70:120] = 0.9
    return image, masks  # masks[3] is empty


def test_crop_classify_matches_manual_crops(resnet_clip: CLIPModel) -> None:
    image, masks = _image_and_masks()
    text = F.normalize(torch.randn(4, 128), dim=-1)
    normalised = resnet_clip.normalize(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    # The left half (128 x 64) centred in a 128 x 128 square, the rest the mean colour (0 once normalised).
    left = torch.zeros_like(normalised)
    left[..., 32:96] = normalised[..., :64]
    with torch.no_grad():
        probs = crop_classify(resnet_clip, image, masks, text)
        feats = F.normalize(resnet_clip.open_clip.encode_image(torch.cat([normalised, left])), dim=-1)
        expected = (resnet_clip.logit_scale * feats @ text.T).softmax(-1)
    assert probs.shape == (4, 4)
    torch.testing.assert_close(probs[:2], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(probs[3], torch.full((4,), 0.25))
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_crop_classify_top_k_and_tensor_input(resnet_clip: CLIPModel) -> None:
    image, masks = _image_and_masks()
    text = F.normalize(torch.randn(3, 128), dim=-1)
    with torch.no_grad():
        full = crop_classify(resnet_clip, image, masks, text)
        picked = crop_classify(resnet_clip, image, masks, text, top_k_indices=[2, 3, 0])
        as_tensor = crop_classify(resnet_clip, torch.from_numpy(image).permute(2, 0, 1).float() / 255, masks, text)
    assert picked.shape == (3, 3)
    torch.testing.assert_close(picked, full[[2, 3, 0]])
    torch.testing.assert_close(as_tensor, full)
    with pytest.raises(ValueError, match="top_k_indices"):
        crop_classify(resnet_clip, image, masks, text, top_k_indices=[4])
    with pytest.raises(ValueError, match="uint8"):
        crop_classify(resnet_clip, image.astype(np.float32), masks, text)


def test_box_view_keeps_the_image_and_views_combine_geometrically(resnet_clip: CLIPModel) -> None:
    image, masks = _image_and_masks()
    text = F.normalize(torch.randn(4, 128), dim=-1)
    normalised = resnet_clip.normalize(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    # The left half's square spans x = -32 .. 96: the box view keeps the image's columns 0 .. 96 (the
    # masked view only 0 .. 64) and fills the columns left of the image with the mean colour (0).
    masked, _ = masked_crops(resnet_clip, image, masks[1:2])
    box, kept = masked_crops(resnet_clip, image, masks[1:2], views=("box",))
    both, _ = masked_crops(resnet_clip, image, masks[1:2], views=("masked", "box"))
    assert torch.equal(both, torch.cat([masked, box]))  # one call, view-major
    expected_box, expected_masked = torch.zeros_like(normalised), torch.zeros_like(normalised)
    expected_box[..., 32:] = normalised[..., :96]
    expected_masked[..., 32:96] = normalised[..., :64]
    torch.testing.assert_close(box, expected_box, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(masked, expected_masked, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        views = {view: crop_classify(resnet_clip, image, masks, text, views=(view,)) for view in CROP_VIEWS}
        both = crop_classify(resnet_clip, image, masks, text, views=("masked", "box"))
    assert not torch.allclose(views["box"][2], views["masked"][2])  # the 0.9 mask's box shows more image
    expected = ((views["masked"].log() + views["box"].log()) / 2).softmax(-1)
    torch.testing.assert_close(both, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[3], torch.full((4,), 0.25))  # the empty mask stays uniform
    assert kept.tolist() == [0]
    for views_given in ((), ("box", "box"), ("masked", "blurred")):
        with pytest.raises(ValueError, match="crop_views must name one or more distinct views of masked, box"):
            crop_classify(resnet_clip, image, masks, text, views=views_given)


# ------------------------------------------------------------------------------------------------ weights


def test_pretrained_tag_missing_from_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(FileNotFoundError, match=r"pretrained='openai'.*hf download timm/resnet50_clip\.openai"):
        CLIPModel.build(CLIPConfig(model_name="RN50", pretrained="openai"))
    with pytest.raises(ValueError, match="tags of that model"):
        CLIPModel.build(CLIPConfig(model_name="RN50", pretrained="no_such_tag"))


def test_pretrained_tag_resolves_from_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    repo = tmp_path / "hub" / "models--timm--resnet50_clip.openai"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"stub")
    path, pretrained_cfg = resolve_pretrained_tag("RN50", "openai")
    assert Path(path) == snapshot / "open_clip_model.safetensors"
    assert pretrained_cfg["quick_gelu"] is True


def test_local_weights_round_trip(tmp_path: Path, resnet_clip: CLIPModel) -> None:
    raw = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in resnet_clip.open_clip.state_dict().items()}, str(raw))
    wrapped = tmp_path / "wrapped.safetensors"  # keys "open_clip.*", as CLIPModel.state_dict() gives them
    save_file({k: v.contiguous() for k, v in resnet_clip.state_dict().items()}, str(wrapped))
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        reference = (resnet_clip.encode_text(["sky", "car"]), resnet_clip.open_clip.encode_image(images))
        for path in (raw, wrapped):
            torch.manual_seed(123)  # a different random init, overwritten by the file
            loaded = CLIPModel.build(
                CLIPConfig(model_cfg=tiny_clip_model_cfg(), templates=TEMPLATES, pretrained=str(path))
            )
            torch.testing.assert_close(loaded.encode_text(["sky", "car"]), reference[0])
            torch.testing.assert_close(loaded.open_clip.encode_image(images), reference[1])


def test_local_weights_for_another_model_are_rejected(tmp_path: Path, vit_clip: CLIPModel) -> None:
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit_clip.open_clip.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="do not fit"):
        fresh_resnet_clip(pretrained=str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fresh_resnet_clip(pretrained=str(tmp_path / "missing.safetensors"))
