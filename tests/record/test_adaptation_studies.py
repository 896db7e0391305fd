"""The adaptation studies that did not ship (experiments.adaptation): grown and fresh image towers, and why
proposal crops are misread."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pmp.clip import CLIPModel
from pmp.config import CLIPConfig, tiny_clip_model_cfg
from tests.test_adapt_clip import _segmenter_proposing, _short_adaptation, _timm_segmenter
from train import world
from train.adapt_clip import adapt
from train.adapt_regions import scene_regions
from train.configs import CLIPAdaptConfig
from train.train_clip import load_clip_for_evaluation


def test_a_deeper_adapted_clip_is_installed_with_its_architecture(tmp_path: Path) -> None:
    from experiments.adaptation import deepen_image_tower
    from pmp.segmenter import Segmenter
    from train.bundle import with_adapted_clip
    from train.configs import CLIPTrainConfig
    from train.train_clip import save_open_clip_folder

    segmenter = _timm_segmenter()
    image = world.render_scene(5, 64).image
    labels = ["sky", "grass", "car", "tree"]
    before = segmenter.run_stages(image, labels, stage2_mode="crop")
    deeper = deepen_image_tower(segmenter.clip, (1, 2, 1, 2))
    with torch.no_grad():
        deeper.open_clip.visual.layer2[1].bn3.weight.fill_(0.5)  # the new block does something
    train_config = CLIPTrainConfig(model_cfg=deeper.config.model_cfg, image_size=deeper.image_size)
    save_open_clip_folder(deeper, train_config, tmp_path / "deeper", {}, "test")
    adapted = with_adapted_clip(segmenter, tmp_path / "deeper")
    assert adapted.config.clip.model_cfg["vision_cfg"]["layers"] == [1, 2, 1, 2]
    assert len(adapted.clip.open_clip.visual.layer2) == 2
    after = adapted.run_stages(image, labels, stage2_mode="crop")
    assert torch.equal(before.p, after.p) and torch.equal(before.mask_logits, after.mask_logits)  # stage 1
    assert not torch.allclose(before.p_hat, after.p_hat)
    adapted.save_pretrained(tmp_path / "segmenter")
    reloaded = Segmenter.from_pretrained(tmp_path / "segmenter").run_stages(image, labels, stage2_mode="crop")
    assert torch.equal(reloaded.p_hat, after.p_hat)


def test_a_fresh_wider_tower_reads_smaller_crops_and_keeps_the_text_tower(tmp_path: Path) -> None:
    from experiments.adaptation import fresh_image_tower
    from pmp.segmenter import Segmenter
    from pmp.stage2 import masked_crops
    from train.bundle import with_adapted_clip
    from train.configs import CLIPTrainConfig
    from train.train_clip import save_open_clip_folder

    segmenter = _timm_segmenter()
    narrow = segmenter.clip.config.model_cfg["vision_cfg"]
    fresh = fresh_image_tower(segmenter.clip, width=narrow["width"] * 2, image_size=32)
    assert fresh.image_size == 32 and fresh.config.model_cfg["vision_cfg"]["width"] == narrow["width"] * 2
    own, new = segmenter.clip.open_clip.state_dict(), fresh.open_clip.state_dict()
    text_keys = [k for k in own if not k.startswith("visual.")]
    assert text_keys and all(torch.equal(own[k], new[k]) for k in text_keys)
    assert new["visual.conv1.weight"].shape[0] == 2 * own["visual.conv1.weight"].shape[0]  # twice as wide
    scene = world.render_scene(5, 64).image
    image = torch.from_numpy(scene).permute(2, 0, 1).float() / 255.0
    crops, _ = masked_crops(fresh, image, torch.ones(2, 64, 64, dtype=torch.bool))
    assert crops.shape[-2:] == (32, 32)  # stage 2 crops at the tower's own size
    with pytest.raises(ValueError, match="multiple of 32"):
        fresh_image_tower(segmenter.clip, width=16, image_size=48)

    train_config = CLIPTrainConfig(model_cfg=fresh.config.model_cfg, image_size=64)  # the world's scale
    save_open_clip_folder(fresh, train_config, tmp_path / "fresh", {}, "test")
    saved = json.loads((tmp_path / "fresh" / "open_clip_config.json").read_text())
    assert saved["preprocess_cfg"]["size"] == 32  # what the tower reads, not the world's scale
    labels = ["sky", "grass", "car", "tree"]
    before = segmenter.run_stages(scene, labels, stage2_mode="crop")
    adapted = with_adapted_clip(segmenter, tmp_path / "fresh")
    after = adapted.run_stages(scene, labels, stage2_mode="crop")
    assert adapted.clip.image_size == 32
    assert torch.equal(before.p, after.p)  # stage 1 untouched
    adapted.save_pretrained(tmp_path / "segmenter")
    reloaded = Segmenter.from_pretrained(tmp_path / "segmenter")
    assert reloaded.clip.image_size == 32
    assert torch.equal(reloaded.run_stages(scene, labels, stage2_mode="crop").p_hat, after.p_hat)


def test_a_deepened_image_tower_computes_what_the_tower_did_and_adapts_and_reloads(tmp_path: Path) -> None:
    from experiments.adaptation import deepen_image_tower

    torch.manual_seed(0)
    clip = CLIPModel.build(CLIPConfig(model_cfg=tiny_clip_model_cfg(), templates=("a photo of a {}.",)))
    with torch.no_grad():  # make every block non-trivial, as a trained tower's are
        for module in clip.open_clip.visual.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.running_mean.uniform_(-0.1, 0.1)
    grown = deepen_image_tower(clip, (2, 1, 3, 1))
    assert grown.config.model_cfg["vision_cfg"]["layers"] == [2, 1, 3, 1]
    assert clip.config.model_cfg["vision_cfg"]["layers"] == [1, 1, 1, 1]  # the source is left as it was
    assert len(grown.open_clip.visual.layer3) == 3
    images = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(grown.open_clip.encode_image(images), clip.open_clip.encode_image(images))
    assert torch.equal(grown.encode_text(["car"]), clip.encode_text(["car"]))
    adapt(grown, _short_adaptation(steps=2), tmp_path)
    reloaded = load_clip_for_evaluation(str(tmp_path / "model"))
    assert reloaded.config.model_cfg["vision_cfg"]["layers"] == [2, 1, 3, 1]
    added = reloaded.open_clip.visual.layer3[2].bn3.weight
    assert added.abs().sum() > 0  # adaptation trained the new blocks


def test_a_tower_cannot_be_shrunk_or_given_another_number_of_stages() -> None:
    import pytest

    from experiments.adaptation import deepen_image_tower

    clip = CLIPModel.build(CLIPConfig(model_cfg=tiny_clip_model_cfg()))
    with pytest.raises(ValueError, match="at least the blocks it has"):
        deepen_image_tower(clip, (0, 1, 1, 1))
    with pytest.raises(ValueError, match="at least the blocks it has"):
        deepen_image_tower(clip, (2, 2, 2))


def test_the_command_line_says_what_vision_layers_it_accepts(capsys) -> None:
    import pytest

    from experiments.adaptation import main

    for bad, message in (("2,x,2,2", "comma-separated block counts"), ("2,0,2,2", "at least one block")):
        with pytest.raises(SystemExit):
            main(["--clip", "checkpoints/tiny-clip", "--measure-only", "--vision-layers", bad])
        assert message in capsys.readouterr().err


def test_a_misread_crop_is_told_apart_by_where_the_name_it_was_given_lies() -> None:
    from experiments.adaptation import _crop_outcome

    car, other_car, wheel, sky = (np.zeros((32, 32), bool) for _ in range(4))
    car[4:14, 4:14], other_car[20:30, 20:30], wheel[10:14, 4:8], sky[:2] = True, True, True, True
    regions = [(car, "car"), (other_car, "car"), (wheel, "wheel"), (sky, "sky")]
    proposal = other_car.copy()
    proposal[20:30, 18:20] = True  # 100 of its 120 pixels
    assert _crop_outcome(proposal, "car", "car", regions) == (100 / 120, None)  # the best car, read right
    assert _crop_outcome(car, "car", "wheel", regions)[1] == "inside the mask"  # 16 of 100 pixels are wheel
    assert _crop_outcome(car, "car", "sky", regions)[1] == "elsewhere in the scene"
    assert _crop_outcome(car, "car", "dog", regions)[1] == "not in it"


def test_crop_errors_bin_every_held_out_crop(monkeypatch) -> None:
    import experiments.adaptation as adapt_clip
    import train.adapt_regions

    scene = world.render_scene(3, 128)
    regions = scene_regions(scene, min_pixels=500)
    segmenter, _ = _segmenter_proposing(scene, regions)
    monkeypatch.setattr(train.adapt_regions, "EVAL_SEED_BASE", 3)  # the held-out scene is scene 3
    config = dataclasses.replace(CLIPAdaptConfig(), image_size=128, min_region_pixels=500, eval_scenes=1)
    errors = adapt_clip.proposal_crop_errors(segmenter.clip, config, segmenter)
    assert errors["crops"] == 1 and math.isclose(sum(b["share"] for b in errors["by_iou"].values()), 1.0)
    [(bin_name, measured)] = errors["by_iou"].items()
    assert float(bin_name.split("-")[0]) >= 0.5 and measured["top1"] == errors["top1"]
    assert math.isclose(sum(errors["errors_lie"].values()), 0.0 if errors["top1"] == 1.0 else 1.0)


def test_crop_errors_read_each_crop_in_the_views_asked(monkeypatch) -> None:
    import experiments.adaptation as adapt_clip
    import train.adapt_regions

    scene = world.render_scene(3, 128)
    segmenter, _ = _segmenter_proposing(scene, scene_regions(scene, min_pixels=500))
    monkeypatch.setattr(train.adapt_regions, "EVAL_SEED_BASE", 3)
    config = dataclasses.replace(CLIPAdaptConfig(), image_size=128, min_region_pixels=500, eval_scenes=1)
    asked, real = [], adapt_clip.crop_classify

    def recording(*args, views, **kwargs):
        asked.append(views)
        return real(*args, views=views, **kwargs)

    monkeypatch.setattr(adapt_clip, "crop_classify", recording)
    both = adapt_clip.proposal_crop_errors(segmenter.clip, config, segmenter, ("masked", "box"))
    masked = adapt_clip.proposal_crop_errors(segmenter.clip, config, segmenter)
    assert asked == [("masked", "box"), ("masked",)] and both["crops"] == masked["crops"] == 1
