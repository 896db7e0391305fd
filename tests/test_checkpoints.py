"""Segmenter checkpoints: saved and loaded identically (sharded, half precision, from the Hub cache), and every
broken or mismatched checkpoint one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pmp.checkpoint import CheckpointError
from pmp.segmenter import Segmenter


def test_save_load_gives_identical_outputs(segmenter: Segmenter, image: np.ndarray, tmp_path: Path) -> None:
    segmenter.save_pretrained(tmp_path / "ckpt", max_shard_size="1GB")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "README.md",
        "checksums.json",
        "config.json",
        "model.safetensors",
    ]
    loaded = Segmenter.from_pretrained(tmp_path / "ckpt")
    saved, reloaded = segmenter.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)  # bit for bit
    a, b = segmenter.segment(image, ["sky", "car"]), loaded.segment(image, ["sky", "car"])
    assert np.array_equal(a.semantic, b.semantic)
    # The same weights in other tensors: the CPU kernels may sum in another order (seen: 1 ulp apart on a
    # loaded machine), so the scores are compared to float32 rounding rather than bit for bit.
    np.testing.assert_allclose(a.p_out, b.p_out, rtol=0, atol=1e-6)


def test_half_precision_checkpoint_loads_as_float32(segmenter: Segmenter, tmp_path: Path) -> None:
    segmenter.save_pretrained(tmp_path / "half", half_precision=True)
    loaded = Segmenter.from_pretrained(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    original = dict(segmenter.named_parameters())
    for name, param in loaded.named_parameters():
        assert torch.allclose(param, original[name], rtol=1e-3, atol=1e-3)


def test_half_precision_by_prefix_halves_only_those_weights(segmenter: Segmenter, tmp_path: Path) -> None:
    from safetensors import safe_open

    folder = segmenter.save_pretrained(tmp_path / "clip-half", half_precision=("clip.",), max_shard_size="1GB")
    with safe_open(str(folder / "model.safetensors"), "pt") as stored:
        dtypes = {key: stored.get_slice(key).get_dtype() for key in stored.keys()}
    floats = {key: dtype for key, dtype in dtypes.items() if dtype.startswith(("F", "BF"))}
    assert floats and all((dtype == "F16") == key.startswith("clip.") for key, dtype in floats.items())
    loaded = Segmenter.from_pretrained(folder)
    original = dict(segmenter.named_parameters())
    for name, param in loaded.named_parameters():  # stage 1 exact, the CLIP within float16 rounding
        if name.startswith("clip."):
            assert torch.allclose(param, original[name], rtol=1e-3, atol=1e-3)
        else:
            assert torch.equal(param, original[name])


def test_truncated_checkpoint_is_a_clear_error(segmenter: Segmenter, tmp_path: Path) -> None:
    folder = segmenter.save_pretrained(tmp_path / "ckpt", max_shard_size="1GB")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt"):  # caught by the checksum
        Segmenter.from_pretrained(folder)
    (folder / "checksums.json").unlink()  # a folder saved by another tool: safetensors' own check
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        Segmenter.from_pretrained(folder)


def test_mismatched_checkpoint_is_a_clear_error(segmenter: Segmenter, tmp_path: Path) -> None:
    folder = segmenter.save_pretrained(tmp_path / "ckpt", max_shard_size="1GB")
    config = json.loads((folder / "config.json").read_text())
    config["decoder"]["num_layers"] = 2  # fewer layers than the weights hold
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match"):
        Segmenter.from_pretrained(folder)
    config["decoder"]["num_layers"] = 3
    config["decoder"]["num_queries"] = 12  # same keys, other shapes
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        Segmenter.from_pretrained(folder)


def test_missing_files_and_bad_config_are_clear_errors(segmenter: Segmenter, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        Segmenter.from_pretrained(tmp_path / "nowhere")
    folder = segmenter.save_pretrained(tmp_path / "ckpt", max_shard_size="1GB")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json.*not a valid"):
        Segmenter.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        Segmenter.from_pretrained(folder)


def test_from_pretrained_reads_a_prepopulated_hub_cache_offline(
    segmenter: Segmenter, image: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--someone--pmp-tiny" / "snapshots" / commit
    segmenter.save_pretrained(snapshot)
    (cache / "models--someone--pmp-tiny" / "refs").mkdir(parents=True)
    (cache / "models--someone--pmp-tiny" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded = Segmenter.from_pretrained("someone/pmp-tiny")
    assert np.allclose(loaded.segment(image, ["sky"]).p_out, segmenter.segment(image, ["sky"]).p_out, atol=1e-5)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        Segmenter.from_pretrained("someone/not-cached")


def test_large_weights_are_sharded_and_load_identically(
    segmenter: Segmenter, image: np.ndarray, tmp_path: Path
) -> None:
    folder = segmenter.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (folder / "model.safetensors.index.json").is_file()
    assert not (folder / "model.safetensors").exists()
    loaded = Segmenter.from_pretrained(folder)
    # allclose, not equal: the text cache may hold "sky" encoded in a batch truncated to another length.
    assert np.allclose(loaded.segment(image, ["sky"]).p_out, segmenter.segment(image, ["sky"]).p_out, atol=1e-5)
    # Re-saving unsharded removes the shards, so a folder never mixes two layouts.
    segmenter.save_pretrained(folder, max_shard_size="1GB")
    assert not list(folder.glob("model-*-of-*.safetensors")) and (folder / "model.safetensors").is_file()
    segmenter.save_pretrained(folder, max_shard_size="1MB")
    (folder / shards[-1]).unlink()
    with pytest.raises(CheckpointError, match=f"{shards[-1]}: missing"):
        Segmenter.from_pretrained(folder)


def test_bundled_names_win_over_same_named_folders_without_a_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pmp import checkpoint

    bundled = tmp_path / "bundled"
    (bundled / "pmp").mkdir(parents=True)
    (bundled / "pmp" / "config.json").write_text("{}")
    (tmp_path / "cwd" / "pmp").mkdir(parents=True)  # like the package folder seen from the repository root
    monkeypatch.setattr(checkpoint, "BUNDLED_DIR", bundled)
    monkeypatch.chdir(tmp_path / "cwd")
    assert checkpoint.resolve_checkpoint("pmp") == bundled / "pmp"


def test_push_to_hub_uploads_the_checkpoint_folder(segmenter: Segmenter, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: dict[str, object] = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["repo"] = (repo_id, kwargs)

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            loaded = Segmenter.from_pretrained(folder_path)  # what lands on the Hub loads back
            calls["text_mode"] = loaded.config.decoder.text_mode

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = segmenter.push_to_hub("someone/pmp-tiny", token="t0k")
    assert url == "https://huggingface.co/someone/pmp-tiny"
    assert calls["repo"][0] == "someone/pmp-tiny" and calls["token"] == "t0k"
    assert "config.json" in calls["files"] and "README.md" in calls["files"] and calls["text_mode"] == "pmp"


def test_a_flipped_bit_in_tensor_data_is_a_clear_error(segmenter: Segmenter, tmp_path: Path) -> None:
    folder = segmenter.save_pretrained(tmp_path / "ckpt", max_shard_size="1GB")
    assert (folder / "checksums.json").is_file()
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64] ^= 0x04  # inside the last tensor's bytes: the safetensors header still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt: its bytes do not match the sha256"):
        Segmenter.from_pretrained(folder)


def test_a_config_value_of_the_wrong_type_names_the_field(segmenter: Segmenter, tmp_path: Path) -> None:
    folder = segmenter.save_pretrained(tmp_path / "ckpt", max_shard_size="1GB")
    config = json.loads((folder / "config.json").read_text())
    config["decoder"]["num_queries"] = "lots"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"decoder\.num_queries='lots' has the wrong type: expected int"):
        Segmenter.from_pretrained(folder)


def test_bundled_checkpoints_carry_matching_checksums() -> None:
    from pmp.checkpoint import BUNDLED_DIR, verify_checksums, weight_files

    for name in ("baseline", "pmp"):
        assert (BUNDLED_DIR / name / "checksums.json").is_file()
        verify_checksums(BUNDLED_DIR / name, weight_files(BUNDLED_DIR / name))
