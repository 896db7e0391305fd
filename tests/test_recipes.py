"""The paper-scale recipes as files, and the training pieces they switch on (OVSeg's and Mask2Former's values)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train.augment import color_aug_ssd
from train.batches import rank_sample_indices
from train.configs import SegTrainConfig
from train.optimizer import exempt_from_decay
from train.recipes import RECIPES_DIR, flat_values, get_recipe, read_recipe_file, recipe_files, recipe_table
from train.runtime import warmup_poly_lr_factor
from train.train_segmenter import check_backbone_weights

REPO = Path(__file__).resolve().parent.parent
HOSTS = ("ovseg-swinb-vitl14", "ovseg-r101c-vitb16", "m2f-r50-vitb16", "m2f-swinb-vitl14", "fcclip-convnextl")


def test_every_host_has_its_file_and_three_variants():
    assert sorted(recipe_files()) == sorted([*HOSTS, "world"])
    for host in HOSTS:
        for variant, mode in (("baseline", "none"), ("pmp", "pmp"), ("pmp_residual", "pmp_residual")):
            config = get_recipe(f"{host}-{variant}")
            assert config.model.decoder.text_mode == mode and config.model.name == f"{host}-{variant}"


@pytest.mark.parametrize("host", [*HOSTS, "world"])
def test_every_value_has_a_source_and_the_resolved_config_holds_it(host):
    recipe = read_recipe_file(RECIPES_DIR / f"{host}.json")
    values = flat_values(recipe["config"])
    assert set(values) == set(recipe["sources"]), set(values) ^ set(recipe["sources"])
    resolved = flat_values(json.loads(json.dumps(get_recipe(f"{host}-pmp").to_dict())))  # tuples as JSON lists
    for key, value in values.items():
        assert resolved[key] == value, key
    assert recipe_table(host) in (REPO / "docs" / "training.md").read_text()  # python -m train.recipes --write-docs


def test_ovsegs_values_as_its_configs_give_them():
    """configs/ovseg_swinB_vitL_bs32_120k.yaml and configs/ovseg_R101c_vitB_bs32_120k.yaml, read by hand."""
    swin, r101 = get_recipe("ovseg-swinb-vitl14-pmp"), get_recipe("ovseg-r101c-vitb16-pmp")
    assert (swin.batch_size, swin.steps, swin.lr, swin.weight_decay, swin.backbone_lr_multiplier) == (
        32, 120_000, 6e-5, 0.01, 1.0
    )  # fmt: skip
    assert (r101.lr, r101.weight_decay, r101.backbone_lr_multiplier, r101.crop_size) == (2e-4, 1e-4, 0.1, 512)
    assert swin.warmup_steps == 1500 and swin.warmup_factor == 1e-6 and swin.clip_grad_norm == 0.01
    assert swin.min_size_train == tuple(range(320, 1281, 64)) and swin.max_size_train == 2560
    assert swin.model.backbone.drop_path_rate == 0.3 and swin.color_aug_ssd and swin.crop_size == 640
    assert swin.model.backbone.pretrained_file == "timm/swin_base_patch4_window12_384.ms_in22k"
    assert (swin.class_weight, swin.mask_weight, swin.dice_weight, swin.no_object_weight) == (1.0, 20.0, 1.0, 0.1)
    assert swin.mask_loss == "full_focal" and swin.training_prompts == "all"
    assert len(swin.model.clip.templates) == 14 and swin.model.clip.model_name == "ViT-L-14"
    assert swin.data == "coco171"
    assert (swin.model.clip.mask_prompt_depth, r101.model.clip.mask_prompt_depth) == (3, 3)  # MASK_PROMPT_DEPTH
    assert (swin.model.crop_box, swin.model.crop_mask_threshold, r101.model.crop_mask_threshold) == ("tight", 0.4, 0.5)


def test_print_config_prints_the_resolved_recipe_without_an_out_folder():
    done = subprocess.run(
        [sys.executable, "-m", "train.train_segmenter", "--recipe", "ovseg-r101c-vitb16-pmp", "--print-config"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert SegTrainConfig.from_dict(json.loads(done.stdout)) == get_recipe("ovseg-r101c-vitb16-pmp")


def test_a_recipe_file_of_ones_own_still_works(tmp_path):
    from train.train_segmenter import read_config

    recipe = read_recipe_file(RECIPES_DIR / "m2f-r50-vitb16.json")
    recipe["config"]["steps"] = 7
    (tmp_path / "mine.json").write_text(json.dumps(recipe))
    assert read_config(tmp_path / "mine.json").steps == 7


@pytest.mark.parametrize(("ranks", "per_rank"), [(1, 32), (2, 16), (4, 8), (8, 4)])
def test_the_global_batch_is_divided_over_the_ranks(ranks, per_rank):
    config = get_recipe("ovseg-swinb-vitl14-pmp")
    assert config.per_rank_batch(ranks) == per_rank
    step = 5
    taken = [i for rank in range(ranks) for i in rank_sample_indices(step, rank, per_rank, config.batch_size)]
    assert taken == list(range(5 * 32, 6 * 32))  # the same samples whatever the number of ranks


def test_a_global_batch_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="the global batch 32 does not divide over 3 ranks"):
        get_recipe("ovseg-swinb-vitl14-pmp").per_rank_batch(3)


def test_a_backbone_without_weights_is_refused_unless_from_scratch():
    import dataclasses

    config = get_recipe("m2f-r50-vitb16-pmp")
    check_backbone_weights(config)  # the recipe names its weights
    bare = dataclasses.replace(config.model, backbone=dataclasses.replace(config.model.backbone, pretrained_file=None))
    with pytest.raises(ValueError, match="would train from random weights.*--from-scratch"):
        check_backbone_weights(dataclasses.replace(config, model=bare))
    check_backbone_weights(dataclasses.replace(config, model=bare, from_scratch=True))
    assert get_recipe("world-pmp").from_scratch  # the world's backbone is trained from scratch on purpose


def test_detectron2s_warmup_poly_schedule_by_hand():
    assert warmup_poly_lr_factor(0, 120_000, 1500, 1e-6) == pytest.approx(1e-6)
    # half-way through the warm-up: 1e-6 * 0.5 + 0.5, times the poly term of step 750 over the whole run
    assert warmup_poly_lr_factor(750, 120_000, 1500, 1e-6) == pytest.approx(0.5000005 * (1 - 750 / 120_000) ** 0.9)
    assert warmup_poly_lr_factor(60_000, 120_000, 1500, 1e-6) == pytest.approx(0.5**0.9)
    assert warmup_poly_lr_factor(100, 1000, 0, 1.0) == pytest.approx(0.9**0.9)  # Mask2Former: no warm-up


def test_detectron2_decay_groups_on_a_tiny_swin():
    """Norm layers and Swin's position tables get no decay; biases of linear layers do (detectron2's rule)."""
    import timm

    swin = timm.create_model("swin_tiny_patch4_window7_224", embed_dim=8, depths=(1, 1), num_heads=(1, 1),
                             num_classes=0, img_size=56)  # fmt: skip
    exempt = exempt_from_decay(swin, "detectron2")
    expected = {
        "patch_embed.norm.weight", "patch_embed.norm.bias",
        "layers.0.blocks.0.norm1.weight", "layers.0.blocks.0.norm1.bias",
        "layers.0.blocks.0.attn.relative_position_bias_table",
        "layers.0.blocks.0.norm2.weight", "layers.0.blocks.0.norm2.bias",
        "layers.1.downsample.norm.weight", "layers.1.downsample.norm.bias",
        "layers.1.blocks.0.norm1.weight", "layers.1.blocks.0.norm1.bias",
        "layers.1.blocks.0.attn.relative_position_bias_table",
        "layers.1.blocks.0.norm2.weight", "layers.1.blocks.0.norm2.bias",
        "norm.weight", "norm.bias",
    }  # fmt: skip
    assert exempt == expected
    assert "layers.0.blocks.0.attn.qkv.bias" not in exempt  # biases are decayed
    names = exempt_from_decay(swin, "names")
    assert "layers.0.blocks.0.attn.qkv.bias" in names  # the world's rule exempts every 1-d parameter


def test_color_aug_ssd_is_a_function_of_its_seed():
    image = np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    first = color_aug_ssd(image, np.random.default_rng(3))
    assert np.array_equal(first, color_aug_ssd(image, np.random.default_rng(3)))
    outputs = [color_aug_ssd(image, np.random.default_rng(seed)) for seed in range(20)]
    assert any(not np.array_equal(output, image) for output in outputs)
    assert all(output.dtype == np.uint8 and output.shape == image.shape for output in outputs)


def test_color_aug_ssd_keeps_a_grey_image_grey():
    """Saturation and hue do not move a grey pixel; brightness and contrast move every pixel alike."""
    grey = np.full((8, 8, 3), 120, np.uint8)
    for seed in range(20):
        out = color_aug_ssd(grey, np.random.default_rng(seed))
        assert (out == out[0, 0, 0]).all()


def test_the_papers_training_prompts_are_every_class():
    from train.batches import Sample, build_batch

    config = get_recipe("ovseg-r101c-vitb16-pmp")
    label = np.full((8, 8), 255, np.int64)
    label[:4] = 3
    label[4:, :4] = 170
    embeddings = torch.eye(171)
    samples = [Sample(np.zeros((8, 8, 3), np.uint8), label), Sample(np.zeros((8, 8, 3), np.uint8), label * 0 + 7)]
    _, text, text_mask, targets = build_batch(samples, 0, embeddings, config, torch.device("cpu"))
    assert text.shape == (2, 171, 171) and text_mask.all()
    assert torch.equal(text[0], embeddings)  # in the vocabulary's order
    assert targets[0]["labels"].tolist() == [3, 170] and targets[1]["labels"].tolist() == [7]
    assert math.isclose(float(targets[0]["masks"][0].float().mean()), 0.5)


def test_maskformers_focal_mask_loss_by_hand():
    """Logit 0 everywhere, 4 of the target's 16 pixels on: a positive pixel costs ln2 * 0.5^2 * 0.25, a negative
    one ln2 * 0.5^2 * 0.75 (alpha 0.25, gamma 2); dice with p = 0.5: 1 - (2 * 2 + 1) / (8 + 4 + 1)."""
    from train.losses import SetCriterion
    from train.matcher import HungarianMatcher, batch_sigmoid_focal_cost

    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, 0] = True
    outputs = {"pred_logits": torch.tensor([[[5.0, 0.0]]]), "pred_masks": torch.zeros(1, 1, 2, 2)}
    targets = [{"labels": torch.tensor([0]), "masks": target}]
    criterion = SetCriterion(HungarianMatcher(mask_loss="full_focal"), mask_loss="full_focal")
    losses = criterion(outputs, targets)
    positive, negative = math.log(2) * 0.25 * 0.25, math.log(2) * 0.25 * 0.75
    assert float(losses["loss_mask"]) == pytest.approx((4 * positive + 12 * negative) / 16)
    assert float(losses["loss_dice"]) == pytest.approx(1 - 5 / 13)
    cost = batch_sigmoid_focal_cost(torch.zeros(1, 4), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert float(cost) == pytest.approx((positive + 3 * negative) / 4)


def test_the_dry_run_figures_in_the_docs_are_the_results_files():
    from train.dry_run import dry_run_sentence

    reports = sorted((REPO / "results").glob("dry_run_*.json"))
    assert {path.stem for path in reports} >= {"dry_run_ovseg-swinb-vitl14-pmp", "dry_run_fcclip-convnextl-pmp"}
    for path in reports:
        assert dry_run_sentence(json.loads(path.read_text())) in (REPO / "docs" / "training.md").read_text(), path


def test_ovsegs_class_head_is_an_mlp_at_a_fixed_temperature_of_100():
    """Hand-set weights: the MLP is relu(identity) then identity, so e_q = normalise(relu(q))."""
    from pmp.modeling.heads import OpenVocabClassHead

    head = OpenVocabClassHead(2, 2, layers=2, hidden=2, fixed_scale=100.0)
    with torch.no_grad():
        for layer in head.proj.layers:
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
        head.no_object_embed.copy_(torch.tensor([0.0, 3.0]))
    assert not any("logit_scale" in name for name, _ in head.named_parameters())  # nothing learns the scale
    queries = torch.tensor([[[3.0, 4.0], [-1.0, 2.0]]])  # (B=1, P=2, hidden)
    logits = head(queries, torch.tensor([[[2.0, 0.0]]]), torch.tensor([[True]]))
    assert logits[0].flatten().tolist() == pytest.approx([60.0, 80.0, 0.0, 100.0])
    recipe = get_recipe("ovseg-swinb-vitl14-pmp").model.decoder
    assert (recipe.class_head_layers, recipe.class_head_hidden_dim, recipe.class_logit_scale) == (2, 1024, 100.0)


def test_a_segmenter_with_ovsegs_class_head_segments():
    import dataclasses

    from pmp.segmenter import Segmenter
    from tests.tiny import tiny_segmenter_config

    config = tiny_segmenter_config("pmp")
    config.decoder = dataclasses.replace(
        config.decoder, class_head_layers=2, class_head_hidden_dim=16, class_logit_scale=100.0
    )
    result = Segmenter(config).segment(np.zeros((40, 56, 3), np.uint8), ["sky", "car"])
    assert result.semantic.shape == (40, 56)


def test_decoder_dropout_acts_in_training_only():
    import dataclasses

    from pmp.segmenter import Segmenter
    from tests.tiny import tiny_segmenter_config

    for kind, dropout, differ in (("maskformer", 0.1, True), ("mask2former", 0.1, True), ("maskformer", 0.0, False)):
        config = tiny_segmenter_config("pmp")
        config.decoder = dataclasses.replace(config.decoder, kind=kind, dropout=dropout)
        torch.manual_seed(0)
        model = Segmenter(config).proposal_model.train()
        images, text = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 128)
        mask = torch.ones(1, 3, dtype=torch.bool)
        first, second = (model(images, text, mask)["pred_masks"] for _ in range(2))
        assert (not torch.equal(first, second)) == differ, (kind, dropout)
        model.eval()
        assert torch.equal(model(images, text, mask)["pred_masks"], model(images, text, mask)["pred_masks"])


def test_frozen_batch_norm_keeps_its_statistics_in_training():
    from pmp.modeling.backbone import TimmBackbone

    backbone = TimmBackbone("resnet18", image_size=64, frozen_batch_norm=True).train()
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in backbone.modules())
    before = {name: value.clone() for name, value in backbone.state_dict().items()}
    backbone(torch.randn(2, 3, 64, 64) * 5 + 3)
    assert all(torch.equal(before[name], value) for name, value in backbone.state_dict().items())
    assert get_recipe("ovseg-r101c-vitb16-pmp").model.backbone.frozen_batch_norm
    assert not get_recipe("ovseg-swinb-vitl14-pmp").model.backbone.frozen_batch_norm  # Swin has LayerNorm only


def test_each_rank_resumes_its_own_random_streams(tmp_path):
    import random

    from train.runtime import load_training_state, rng_state, save_training_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    states = []
    for seed in (11, 22):  # what two ranks would hold
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        states.append(rng_state())
    path = save_training_state(tmp_path, 5, model, optimizer, {}, rng_states=states)
    for rank, seed in ((0, 11), (1, 22), (3, 22)):  # rank 3 of a larger resumed run reuses rank 3 % 2's
        load_training_state(path, model, optimizer, rank=rank)
        drawn = (torch.rand(1).item(), np.random.rand(), random.random())
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        assert drawn == (torch.rand(1).item(), np.random.rand(), random.random()), rank


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_restores_the_cuda_generator(tmp_path):
    from train.runtime import load_training_state, save_training_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    torch.cuda.manual_seed(7)
    path = save_training_state(tmp_path, 1, model, optimizer, {})
    expected = torch.rand(3, device="cuda")
    torch.cuda.manual_seed(8)
    load_training_state(path, model, optimizer)
    assert torch.equal(torch.rand(3, device="cuda"), expected)


def test_init_from_loads_a_baseline_into_pmp_and_leaves_the_text_layers_new(tmp_path):
    import dataclasses

    from pmp.segmenter import Segmenter
    from tests.tiny import tiny_segmenter_config
    from train.init_from import load_baseline_weights

    torch.manual_seed(0)
    folder = Segmenter(tiny_segmenter_config("none")).save_pretrained(tmp_path / "baseline")
    baseline = Segmenter.from_pretrained(folder).proposal_model.state_dict()
    torch.manual_seed(1)
    pmp = Segmenter(tiny_segmenter_config("pmp")).proposal_model
    text_before = {k: v.clone() for k, v in pmp.state_dict().items() if k.startswith("decoder.text.")}
    fresh = load_baseline_weights(pmp, folder)
    assert fresh == sorted(text_before) and len(fresh) == 16  # 3 layers' attention + the rest of the text stack
    after = pmp.state_dict()
    assert all(torch.equal(after[key], value) for key, value in baseline.items())
    assert all(torch.equal(after[key], value) for key, value in text_before.items())
    other = tiny_segmenter_config("pmp")
    other.decoder = dataclasses.replace(other.decoder, num_queries=5)
    with pytest.raises(ValueError, match="not a baseline of this recipe's model.*of another shape"):
        load_baseline_weights(Segmenter(other).proposal_model, folder)


def test_validation_during_training_reads_the_held_out_split_of_a_real_benchmark(tmp_path):
    import dataclasses

    from pmp.segmenter import Segmenter
    from tests.tiny import tiny_segmenter_config
    from train.dry_run import write_sample_dataset
    from train.runtime import setup_distributed
    from train.train_segmenter import _evaluate

    write_sample_dataset(tmp_path, "ade150", count=2, split="val")
    config = dataclasses.replace(
        get_recipe("ovseg-r101c-vitb16-pmp"), data_root=str(tmp_path), eval_limit=2, eval_benchmark="ade150"
    )
    torch.manual_seed(0)
    metrics = _evaluate(Segmenter(tiny_segmenter_config("pmp")), config, setup_distributed("cpu"))
    assert set(metrics) == {f"eval/ade150/{key}" for key in ("miou", "miou_seen", "miou_unseen", "proposal_recall")}
    assert 0.0 <= metrics["eval/ade150/miou"] <= 1.0
    assert get_recipe("ovseg-swinb-vitl14-pmp").eval_every == 5000  # OVSeg's TEST.EVAL_PERIOD


def test_a_run_saves_its_grad_scaler_beside_the_weights(tmp_path):
    """On CPU autocast is off and the scaler is disabled (its state empty); the run is the same as before."""
    from safetensors import safe_open

    from tests.test_train_seg import tiny_train_config
    from train.train_segmenter import train

    train(tiny_train_config(steps=2, checkpoint_every=2, amp_dtype="float16"), tmp_path, resume=False)
    [checkpoint] = (tmp_path / "checkpoints").glob("step-*.safetensors")
    with safe_open(str(checkpoint), framework="pt") as handle:
        extra = json.loads(handle.metadata()["extra"])
    assert "grad_scaler" in extra
    if not torch.cuda.is_available():
        assert extra["grad_scaler"] == {}
    with pytest.raises(ValueError, match="amp_dtype='float32' is not supported"):
        SegTrainConfig.from_dict({"amp_dtype": "float32"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_training_scales_the_loss_and_resumes_the_scale(tmp_path):
    from safetensors import safe_open

    from tests.test_train_seg import tiny_train_config
    from train.train_segmenter import train

    train(tiny_train_config(steps=2, checkpoint_every=2, amp_dtype="float16"), tmp_path, resume=False)
    [checkpoint] = (tmp_path / "checkpoints").glob("step-*.safetensors")
    with safe_open(str(checkpoint), framework="pt") as handle:
        scaler = json.loads(handle.metadata()["extra"])["grad_scaler"]
    assert scaler["scale"] > 1.0  # GradScaler starts at 2**16 and halves on overflow


def test_the_data_loader_gives_the_batches_of_the_synchronous_path():
    import dataclasses

    from tests.test_train_seg import tiny_train_config
    from train.batches import TrainingData, build_batch, step_batches

    config = tiny_train_config(steps=4, batch_size=4)
    data = TrainingData(config)
    embeddings = torch.randn(len(data.class_names), 128)
    built = {}
    for workers in (0, 2):
        run = dataclasses.replace(config, num_workers=workers)
        built[workers] = [
            build_batch(samples, 7 + step, embeddings, run, torch.device("cpu"), pixels)
            for step, (samples, pixels) in enumerate(step_batches(data, run, 1, 1, 2, pin_memory=False), start=1)
        ]
    assert len(built[0]) == len(built[2]) == 3  # steps 1..3 of rank 1's two samples
    for sync, loaded in zip(built[0], built[2]):
        images, text, mask, targets = sync
        assert torch.equal(images, loaded[0]) and torch.equal(text, loaded[1]) and torch.equal(mask, loaded[2])
        for mine, theirs in zip(targets, loaded[3]):
            assert torch.equal(mine["labels"], theirs["labels"]) and torch.equal(mine["masks"], theirs["masks"])
    assert get_recipe("ovseg-swinb-vitl14-pmp").num_workers == 4  # OVSeg's DATALOADER.NUM_WORKERS


def test_openai_clip_keeps_quick_gelu_whether_loaded_by_tag_or_by_file(tmp_path):
    import dataclasses

    from safetensors.torch import save_file

    from pmp.clip.loading import load_open_clip, tag_quick_gelu
    from pmp.config import CLIPConfig, tiny_clip_model_cfg

    assert tag_quick_gelu(CLIPConfig(model_name="ViT-L-14", pretrained="openai"))  # open_clip's registry says so
    assert not tag_quick_gelu(CLIPConfig(model_name="ViT-L-14", pretrained=str(tmp_path / "w.safetensors")))
    tiny = CLIPConfig(model_name="tiny", model_cfg=tiny_clip_model_cfg())
    model = load_open_clip(tiny)[0]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    for quick, expected in ((None, "GELU"), (True, "QuickGELU")):
        cfg = dataclasses.replace(tiny, pretrained=str(tmp_path / "w.safetensors"), quick_gelu=quick)
        loaded = load_open_clip(cfg)[0]
        assert type(loaded.transformer.resblocks[0].mlp.gelu).__name__ == expected
    openai = [host for host in HOSTS if get_recipe(f"{host}-pmp").model.clip.pretrained == "openai"]
    assert len(openai) == 4 and all(get_recipe(f"{host}-pmp").model.clip.quick_gelu for host in openai)
    assert get_recipe("fcclip-convnextl-pmp").model.clip.quick_gelu is False  # LAION's ConvNeXt: plain GELU


@pytest.mark.parametrize(("recipe", "folder"), [("world-pmp", "pmp"), ("world-baseline", "baseline")])
def test_the_world_recipe_file_is_the_shipped_models_config(recipe, folder):
    """checkpoints/*/config.json, up to the CLIP the bundle installs by reference (and fields the checkpoint
    predates, which take their defaults): the file reproduces what was shipped."""
    import dataclasses

    from pmp.config import SegmenterConfig

    shipped = SegmenterConfig.from_dict(json.loads((REPO / "checkpoints" / folder / "config.json").read_text()))
    shipped.clip = dataclasses.replace(shipped.clip, checkpoint=None, checkpoint_sha256=None)
    assert shipped == get_recipe(recipe).model


def test_the_world_studies_change_only_what_they_say():
    from train.recipes import recipe_names

    world = [name for name in recipe_names() if name.startswith("world-")]
    assert len(world) == 6 + 6 + 2  # every text mode, each at the 64-channel head, and the two pilots
    narrow = get_recipe("world-concat-width64").model
    assert (narrow.decoder.hidden_dim, narrow.decoder.num_heads, narrow.decoder.dim_feedforward) == (64, 4, 256)
    assert narrow.decoder.text_mode == "concat" and narrow.pixel_decoder.conv_dim == 64
    assert get_recipe("world-baseline-msdeform").model.pixel_decoder.kind == "msdeform"
    with pytest.raises(ValueError, match="unknown recipe 'world-pmp-msdeform'"):
        get_recipe("world-pmp-msdeform")  # the pixel-decoder pilot exists for the baseline only


@pytest.mark.parametrize("kind", ["mask2former", "maskformer"])
def test_every_trainable_parameter_gets_a_gradient_in_every_text_mode(kind):
    """What lets DDP run without find_unused_parameters: a parameter without gradient would hang the ranks."""
    import dataclasses

    from pmp.config import TEXT_MODES
    from pmp.segmenter import Segmenter
    from tests.tiny import tiny_segmenter_config
    from train.losses import SetCriterion
    from train.matcher import HungarianMatcher
    from train.train_segmenter import _to_float

    for mode in TEXT_MODES:
        config = tiny_segmenter_config(mode)
        config.decoder = dataclasses.replace(config.decoder, kind=kind, class_head_layers=2, class_head_hidden_dim=16)
        torch.manual_seed(0)
        model = Segmenter(config).proposal_model.train()
        text, mask = torch.randn(2, 3, 128), torch.tensor([[True, True, True], [True, True, False]])
        outputs = model(torch.randn(2, 3, 64, 64), text, mask)
        targets = [
            {"labels": torch.tensor([0, 2]), "masks": torch.rand(2, 64, 64) > 0.5},
            {"labels": torch.tensor([], dtype=torch.int64), "masks": torch.zeros(0, 64, 64, dtype=torch.bool)},
        ]
        criterion = SetCriterion(HungarianMatcher())
        criterion.total_loss(criterion(_to_float(outputs), targets)).backward()
        unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, (mode, unused[:5])


def test_the_cost_table_is_the_one_its_results_file_gives():
    from benchmarks.train_step import cost_table

    results = json.loads((REPO / "results" / "train_step_ovseg.json").read_text())
    assert cost_table(results) in (REPO / "docs" / "training.md").read_text()
    # 3.84 M image-iterations x 1.154 TFLOP at 30% of 312 TFLOP/s, by hand: 13.1 hours; at 3%: 131.5 hours
    assert "| 13 | 39 | 132 |" in cost_table(results)
