"""A segmenter whose CLIP is a reference to an open_clip folder: saved without the CLIP's weights, loaded
from that folder bit for bit, pinned by its sha256, refused when the folder is not its CLIP."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import tiny_segmenter_config

from pmp import checkpoint
from pmp.checkpoint import CheckpointError
from pmp.segmenter import Segmenter


def _segmenter() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(tiny_segmenter_config("pmp"))


def _open_clip_folder(segmenter: Segmenter, folder: Path) -> Path:
    """The segmenter's CLIP as an open_clip folder, as train.train_clip writes one (float32 here, so that
    it is exactly the segmenter's CLIP)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.contiguous() for key, value in segmenter.clip.open_clip.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"), metadata={"format": "pt"})
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": segmenter.config.clip.model_cfg}))
    return folder


def _saved_keys(folder: Path) -> set[str]:
    return {key for path in checkpoint.weight_files(folder) for key in load_file(str(path))}


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


def test_a_referenced_clip_is_left_out_and_loaded_back_exactly(tmp_path: Path) -> None:
    segmenter = _segmenter()
    clip = _open_clip_folder(segmenter, tmp_path / "clip")
    copy = segmenter.save_pretrained(tmp_path / "copy")
    segmenter.reference_clip(clip)
    assert segmenter.config.clip.checkpoint == str(clip)
    assert segmenter.config.clip.checkpoint_sha256 == checkpoint.file_sha256(clip / "open_clip_model.safetensors")
    shared = segmenter.save_pretrained(tmp_path / "shared")
    keys = _saved_keys(shared)
    assert keys == {key for key in _saved_keys(copy) if not key.startswith("clip.")}
    assert keys and not any(key.startswith("clip.") for key in keys)
    loaded = Segmenter.from_pretrained(shared)
    for (name, ours), (other, theirs) in zip(segmenter.state_dict().items(), loaded.state_dict().items()):
        assert name == other and torch.equal(ours, theirs)
    labels = ["sky", "car", "wheel"]
    a, b = segmenter.segment(_image(), labels), loaded.segment(_image(), labels)
    assert np.array_equal(a.semantic, b.semantic)
    torch.testing.assert_close(torch.as_tensor(a.p_out), torch.as_tensor(b.p_out))  # kernels may round differently


def test_a_changed_or_missing_clip_folder_is_a_clear_error(tmp_path: Path) -> None:
    segmenter = _segmenter()
    clip = _open_clip_folder(segmenter, tmp_path / "clip")
    segmenter.reference_clip(clip)
    saved = segmenter.save_pretrained(tmp_path / "shared")
    weights = clip / "open_clip_model.safetensors"
    state = load_file(str(weights))
    state["logit_scale"] = state["logit_scale"] + 1.0  # another CLIP under the same name
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="not the CLIP this segmenter was saved with .*reference_clip"):
        Segmenter.from_pretrained(saved)
    weights.unlink()
    with pytest.raises(CheckpointError, match="open_clip_model.safetensors: missing"):
        Segmenter.from_pretrained(saved)


def test_a_folder_that_is_not_the_segmenters_clip_cannot_be_referenced(tmp_path: Path) -> None:
    segmenter = _segmenter()
    clip = _open_clip_folder(segmenter, tmp_path / "clip")
    state = load_file(str(clip / "open_clip_model.safetensors"))
    save_file({key: value.half() for key, value in state.items()}, str(clip / "open_clip_model.safetensors"))
    with pytest.raises(ValueError, match="is not this segmenter's CLIP .* would change the outputs"):
        segmenter.reference_clip(clip)  # float32 weights against their float16 rounding
    assert segmenter.config.clip.checkpoint is None  # unchanged
    with pytest.raises(CheckpointError, match="not found"):
        segmenter.reference_clip(tmp_path / "nowhere")


def test_a_standalone_copy_carries_its_clip_and_references_nothing(tmp_path: Path) -> None:
    segmenter = _segmenter()
    clip = _open_clip_folder(segmenter, tmp_path / "clip")
    segmenter.reference_clip(clip)
    alone = segmenter.save_pretrained(tmp_path / "alone", standalone=True)
    assert any(key.startswith("clip.") for key in _saved_keys(alone))
    assert json.loads((alone / "config.json").read_text())["clip"]["checkpoint"] is None
    assert segmenter.config.clip.checkpoint == str(clip)  # the segmenter itself still references it
    (clip / "open_clip_model.safetensors").unlink()
    loaded = Segmenter.from_pretrained(alone)  # needs no other folder
    assert torch.equal(loaded.clip.open_clip.logit_scale, segmenter.clip.open_clip.logit_scale)


@pytest.mark.parametrize("reference, standalone", [("clip", True), ("someone/tiny-clip", False)])
def test_the_hub_copy_carries_a_clip_that_only_this_machine_could_find(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: str, standalone: bool
) -> None:
    import huggingface_hub

    segmenter = _segmenter()
    _open_clip_folder(segmenter, tmp_path / "clip")
    monkeypatch.chdir(tmp_path)
    segmenter.reference_clip("clip")  # a local folder, as a bundled name would be
    segmenter.config = dataclasses.replace(
        segmenter.config, clip=dataclasses.replace(segmenter.config.clip, checkpoint=reference)
    )
    uploaded: dict[str, object] = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            pass

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            uploaded["config"] = json.loads((Path(folder_path) / "config.json").read_text())
            uploaded["clip_keys"] = any(key.startswith("clip.") for key in _saved_keys(Path(folder_path)))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    segmenter.push_to_hub("someone/pmp-tiny")
    assert uploaded["clip_keys"] is standalone
    assert uploaded["config"]["clip"]["checkpoint"] == (None if standalone else reference)


def test_a_reference_without_its_pin_is_refused() -> None:
    config = tiny_segmenter_config("pmp")
    config = dataclasses.replace(config, clip=dataclasses.replace(config.clip, checkpoint="tiny-clip"))
    with pytest.raises(ValueError, match="clip.checkpoint and clip.checkpoint_sha256 go together"):
        config.validate()


def test_the_model_card_says_where_the_clip_is_once(tmp_path: Path) -> None:
    segmenter = _segmenter()
    clip = _open_clip_folder(segmenter, tmp_path / "clip")
    segmenter.reference_clip(clip)
    first = segmenter.save_pretrained(tmp_path / "a", model_card="# a card\n")
    card = (first / "README.md").read_text()
    assert card.startswith("# a card\n") and card.count("## Its CLIP") == 1
    assert f"`{clip}`" in card and segmenter.config.clip.checkpoint_sha256 in card
    again = segmenter.save_pretrained(tmp_path / "b", model_card=card)  # a card read back and re-saved
    assert (again / "README.md").read_text() == card
    alone = segmenter.save_pretrained(tmp_path / "c", model_card=card, standalone=True)
    assert (alone / "README.md").read_text() == "# a card\n"
