"""A checkpoint from the Hub is untrusted input: ``Segmenter.from_pretrained`` on crafted folders.

Each crafted folder must end in one CheckpointError that names the file and the problem, before
anything large is allocated or any file outside the folder is read.
"""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from pmp.checkpoint import BUNDLED_DIR, CheckpointError
from pmp.segmenter import Segmenter
from tests.tiny import tiny_segmenter_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return Segmenter(tiny_segmenter_config()).save_pretrained(
        tmp_path_factory.mktemp("ckpt") / "one", max_shard_size="1GB"
    )


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _edit_config(folder: Path, section: str | None, key: str, value) -> None:
    config = json.loads((folder / "config.json").read_text())
    (config[section] if section else config)[key] = value
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("decoder", "num_queries", 2_000_000, r"decoder\.num_queries=2000000 is out of range: accepted 1 to 1,000"),
        ("decoder", "num_queries", -5, r"decoder\.num_queries=-5 is out of range"),
        ("decoder", "hidden_dim", 2**40, r"decoder\.hidden_dim=1099511627776 is out of range: accepted 1 to 4,096"),
        ("decoder", "num_heads", 3, r"decoder\.hidden_dim=32 must be a multiple of decoder\.num_heads=3"),
        ("pixel_decoder", "dim_feedforward", 0, r"pixel_decoder\.dim_feedforward=0 is out of range"),
        (None, "crop_top_k", 0, r"crop_top_k=0 is out of range: accepted 1 to 1,000"),
        (None, "image_size", 0, r"image_size=0 is out of range: accepted 32 to 4,096"),
        (None, "max_prompts", 10**9, r"max_prompts=1000000000 is out of range"),
        ("clip", "text_cache_size", -1, r"clip\.text_cache_size=-1 is out of range"),
    ],
)
def test_every_size_is_range_checked_before_anything_is_allocated(saved, tmp_path, section, key, value, message):
    folder = _copy(saved, tmp_path)
    _edit_config(folder, section, key, value)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(CheckpointError, match=message):
            Segmenter.from_pretrained(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 5 and peak < 50 * 2**20  # refused from the config, not after building


def test_the_open_clip_config_is_range_checked_too(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["clip"]["model_cfg"] = {"embed_dim": 64, "vision_cfg": {"width": 10**7, "layers": [1, 1]}, "text_cfg": {}}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"clip\.model_cfg\.vision_cfg\.width=10000000 is out of range"):
        Segmenter.from_pretrained(folder)
    config["clip"]["model_cfg"] = {"embed_dim": 64, "vision_cfg": {"layers": [1, 10**6]}, "text_cfg": {}}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"clip\.model_cfg\.vision_cfg\.layers=\[1, 1000000\] is out of range"):
        Segmenter.from_pretrained(folder)


def test_a_deeply_nested_config_is_a_checkpoint_error(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="config.json: not a valid segmenter config: nested too deeply"):
        Segmenter.from_pretrained(folder)


def test_checksums_may_name_only_files_of_the_folder(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    outside = tmp_path / "x.bin"
    outside.write_bytes(b"\0" * 1024)
    checksums = json.loads((folder / "checksums.json").read_text())
    checksums["../x.bin"] = "0" * 64
    (folder / "checksums.json").write_text(json.dumps(checksums))
    with pytest.raises(CheckpointError, match=r"names '\.\./x\.bin', which is not a file of this folder"):
        Segmenter.from_pretrained(folder)


def test_a_shard_missing_from_the_checksums_is_refused(tmp_path):
    folder = _copy(BUNDLED_DIR / "baseline", tmp_path)
    checksums = json.loads((folder / "checksums.json").read_text())
    del checksums["model-00002-of-00003.safetensors"]
    (folder / "checksums.json").write_text(json.dumps(checksums))
    with pytest.raises(CheckpointError, match=r"model-00002-of-00003\.safetensors: not in checksums\.json"):
        Segmenter.from_pretrained(folder)


@pytest.mark.parametrize("shard", ["model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors"])
def test_a_corrupted_shard_of_a_bundled_checkpoint_is_caught(tmp_path, shard):
    """One flipped byte deep inside a tensor of one shard (safetensors' header check passes)."""
    folder = _copy(BUNDLED_DIR / "pmp", tmp_path)
    data = bytearray((folder / shard).read_bytes())
    data[-100] ^= 0x01
    (folder / shard).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{shard.replace('.', chr(92) + '.')}: corrupt"):
        Segmenter.from_pretrained(folder)


def test_a_shard_index_naming_a_file_outside_the_folder_is_refused(tmp_path):
    folder = _copy(BUNDLED_DIR / "baseline", tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "../elsewhere.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"lists '\.\./elsewhere\.safetensors', which is not a file of this"):
        Segmenter.from_pretrained(folder)
