"""Checkpoint folders at their edges, with tiny modules and exact expected texts written by hand
(pmp/checkpoint.py): the model card, atomic writes, what is saved and left out, every error message."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import safe_open
from torch import nn

from pmp import checkpoint as ckpt
from pmp.checkpoint import CheckpointError
from pmp.config import SegmenterConfig
from tests.messages import raises_exactly


def _raises(message: str):
    return raises_exactly(message, CheckpointError)


def _module() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({"a": nn.Linear(2, 2), "clip": nn.Linear(2, 1), "b": nn.Linear(1, 1)})


def test_the_model_card_is_written_out_exactly() -> None:
    config = SegmenterConfig()
    config.decoder.text_mode = "pmp"
    card = ckpt.model_card(config, training="Trained on the world.", command="python -m train", metrics={
        "miou": 0.51234, "steps": 3, "note": "x"})  # fmt: skip
    assert card == (
        "---\nlibrary_name: pmp\ntags:\n- open-vocabulary-segmentation\n- image-segmentation\n---\n\n"
        "# PMP segmenter (text mode `pmp`)\n\n"
        "Two-stage open-vocabulary segmenter, text conditioning `pmp`; backbone `timm:resnet50`, pixel decoder "
        "`fpn`, decoder `mask2former` with 100 queries.\n\n"
        "Trained on the world.\n\n## Training command\n\n```\npython -m train\n```\n\n"
        "## Metrics\n\n| metric | value |\n|---|---|\n| miou | 0.5123 |\n\n"
        '```python\nfrom pmp import Segmenter\n\nseg = Segmenter.from_pretrained("<this folder or repo id>")\n'
        'out = seg("image.jpg", "sky, house, red car")\n```\n'
    )
    config.name, config.decoder.text_mode = "ours", "none"
    assert ckpt.model_card(config).split("\n")[7:10] == [
        "# ours (text mode `none`)", "",
        "Two-stage open-vocabulary segmenter, baseline (no text conditioning); backbone `timm:resnet50`, "
        "pixel decoder `fpn`, decoder `mask2former` with 100 queries.",
    ]  # fmt: skip


def test_the_clip_note_is_added_once_and_removed_when_the_clip_is_stored() -> None:
    config = SegmenterConfig()
    config.clip.checkpoint, config.clip.checkpoint_sha256 = "tiny-clip", "ab" * 32
    note = (
        "\n\n## Its CLIP\n\nNot stored here: the CLIP is the open_clip folder `tiny-clip` (a bundled name, a "
        f"local folder or a Hub repo id; its `open_clip_model.safetensors` has sha256 `{'ab' * 32}`), which "
        "loading reads and checks.\n"
    )
    card = ckpt.with_clip_reference_note("# Card\n\n", config)
    assert card == "# Card" + note
    assert ckpt.with_clip_reference_note(card, config) == card  # saved again: still one note
    assert ckpt.with_clip_reference_note("# Card X\n", config) == "# Card X" + note  # only newlines are trimmed
    assert ckpt.with_clip_reference_note("# Card  \n", config) == "# Card  " + note
    config.clip.checkpoint = None
    assert ckpt.with_clip_reference_note(card, config) == "# Card\n"


def test_atomic_write_goes_through_a_hidden_temp_file_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    seen = []

    def write(path: str) -> None:
        seen.append(Path(path))
        Path(path).write_bytes(b"new")

    ckpt.atomic_write(target, write)
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".model.safetensors.")
    assert seen[0].name.endswith(".tmp") and not seen[0].exists()
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    target.write_text("old")

    def write(path: str) -> None:
        Path(path).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_write(target, write)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_save_leaves_out_a_prefix_keeps_float32_and_writes_the_files(tmp_path: Path) -> None:
    module = _module()
    ckpt.save_checkpoint(module, SegmenterConfig(), tmp_path, model_card_text="# Mine\n", without="clip.")
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as weights:
        assert sorted(weights.keys()) == ["a.bias", "a.weight", "b.bias", "b.weight"]
        assert weights.metadata() == {"format": "pt"}  # what transformers' loaders expect
        assert weights.get_tensor("a.weight").dtype == torch.float32
    digest = hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    assert (tmp_path / "checksums.json").read_text() == f'{{\n  "model.safetensors": "{digest}"\n}}\n'
    config_text = (tmp_path / "config.json").read_text()
    assert config_text.startswith('{\n  "') and config_text.endswith("}\n")
    assert (tmp_path / "README.md").read_text() == "# Mine\n"
    restored = _module()
    with torch.no_grad():
        restored["a"].weight.zero_()
    ckpt.load_weights(restored, tmp_path, without="clip.")
    assert torch.equal(restored["a"].weight, module["a"].weight)


def test_a_sharded_save_writes_hugging_faces_index(tmp_path: Path) -> None:
    module = nn.ModuleDict({"a": nn.Linear(64, 64), "b": nn.Linear(64, 64)})  # 16.6 kB each
    ckpt.save_checkpoint(module, SegmenterConfig(), tmp_path, max_shard_size="20KB")
    index_text = (tmp_path / "model.safetensors.index.json").read_text()
    index = json.loads(index_text)
    assert index_text.startswith('{\n  "metadata"') and index_text.endswith("}\n")
    assert set(index) == {"metadata", "weight_map"} and index["metadata"]["total_size"] > 0
    assert set(index["weight_map"].values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(index_text)
    broken = nn.ModuleDict({"a": nn.Linear(64, 64), "c": nn.Linear(64, 64)})
    with _raises(
        f"{tmp_path / 'model.safetensors.index.json'}: weights do not match {tmp_path / 'config.json'}: "
        "2 missing (e.g. ['c.bias', 'c.weight']), 2 unexpected (e.g. ['b.bias', 'b.weight'])"
    ):
        ckpt.load_weights(broken, tmp_path)


def test_mismatch_and_non_finite_messages_name_the_file_and_the_tensor(tmp_path: Path) -> None:
    wide = nn.ModuleDict({name: nn.Linear(1, 1) for name in "abcd"})
    ckpt.save_checkpoint(wide, SegmenterConfig(), tmp_path)
    weights = tmp_path / "model.safetensors"
    with _raises(
        f"{weights}: weights do not match {tmp_path / 'config.json'}: 0 missing (e.g. []), "
        "6 unexpected (e.g. ['b.bias', 'b.weight', 'c.bias'])"
    ):
        ckpt.load_weights(nn.ModuleDict({"a": nn.Linear(1, 1)}), tmp_path)
    with _raises(
        f"{weights}: weights do not match {tmp_path / 'config.json'}: 4 missing (e.g. ['e.bias', 'e.weight', "
        "'f.bias']), 0 unexpected (e.g. [])"
    ):
        ckpt.load_weights(nn.ModuleDict({name: nn.Linear(1, 1) for name in "abcdef"}), tmp_path)
    with torch.no_grad():
        wide["c"].bias.fill_(float("nan"))
    ckpt.save_checkpoint(wide, SegmenterConfig(), tmp_path)
    with _raises(f"{weights}: tensor 'c.bias' holds NaN or inf values"):
        ckpt.load_weights(wide, tmp_path)


def test_hub_ids_and_paths_are_told_apart() -> None:
    assert ckpt.looks_like_hub_repo("user/pmp-ovseg-swinb")
    for text in ("user/a/b", "./local", "/abs", ".hidden/x", "plain"):
        assert not ckpt.looks_like_hub_repo(text), text


def test_none_is_the_bundled_pmp_and_a_folder_with_a_config_wins_over_a_bundled_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ckpt.resolve_checkpoint(None) == ckpt.BUNDLED_DIR / "pmp"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pmp").mkdir()
    (tmp_path / "pmp" / "config.json").write_text("{}")  # a sharded checkpoint has no model.safetensors
    assert ckpt.resolve_checkpoint("pmp") == Path("pmp")


def test_a_name_that_is_nothing_lists_what_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _raises(
        "checkpoint 'nothing-here' not found: expected a folder with config.json and model.safetensors, "
        "a bundled name (baseline, pmp, tiny-clip), or a Hugging Face Hub repo id such as 'user/pmp-ovseg-swinb'"
    ):
        ckpt.resolve_checkpoint("nothing-here")
    monkeypatch.setattr(ckpt, "BUNDLED_DIR", tmp_path)  # an installation without bundled models
    with pytest.raises(CheckpointError, match=re.escape("a bundled name (none), or")):
        ckpt.resolve_checkpoint("nothing-here")


def test_hub_downloads_ask_for_the_layouts_files_and_explain_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def download(repo_id: str, allow_patterns: list[str]) -> str:
        asked.append((repo_id, allow_patterns))
        raise {"user/offline": LocalEntryNotFoundError("not cached"), "user/gone": OSError("404")}[repo_id]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with _raises(
        "Hub checkpoint 'user/offline' is not in the local Hugging Face cache and the Hub cannot be reached "
        "(HF_HUB_OFFLINE=1): download it once with network access"
    ):
        ckpt.resolve_checkpoint("user/offline")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(CheckpointError, match=r"\(HF_HUB_OFFLINE=0\)"):
        ckpt.resolve_checkpoint("user/offline")
    with _raises("could not fetch Hub checkpoint 'user/gone': 404"):
        ckpt.open_clip_weights("user/gone")
    assert asked[0][1] == ["config.json", "model.safetensors", "model.safetensors.index.json",
                           "model-*-of-*.safetensors", "checksums.json", "README.md"]  # fmt: skip
    assert asked[2] == ("user/gone", ["open_clip_config.json", "open_clip_model.safetensors", "README.md"])


def test_clip_folder_messages(tmp_path: Path) -> None:
    with _raises(
        f"{tmp_path / 'open_clip_model.safetensors'}: missing; {str(tmp_path)!r} is not an open_clip folder, "
        "which needs open_clip_config.json and open_clip_model.safetensors"
    ):
        ckpt.open_clip_weights(tmp_path)
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"other")
    found = hashlib.sha256(b"other").hexdigest()
    with _raises(
        f"{tmp_path / 'open_clip_model.safetensors'}: not the CLIP this segmenter was saved with (sha256 "
        f"{found[:12]}..., the config pins {'0' * 12}...): the folder {str(tmp_path)!r} now holds other weights. "
        "Restore that CLIP, or save the segmenter again with this one (Segmenter.reference_clip)"
    ):
        ckpt.referenced_clip_weights(str(tmp_path), "0" * 64)


def test_checksum_and_index_file_messages(tmp_path: Path) -> None:
    ckpt.save_checkpoint(_module(), SegmenterConfig(), tmp_path)
    weights, sums, index = tmp_path / "model.safetensors", tmp_path / "checksums.json", tmp_path / ckpt.INDEX_NAME
    for name in (".", ".."):
        sums.write_text(json.dumps({name: "0"}))
        with _raises(f"{sums}: names {name!r}, which is not a file of this folder; names must be bare"):
            ckpt.load_weights(_module(), tmp_path)
    sums.write_text("[" * 100_000)
    with _raises(f"{sums}: not a valid checksum file: nested too deeply"):
        ckpt.load_weights(_module(), tmp_path)
    sums.write_text("[1]")
    with _raises(f"{sums}: not a valid checksum file ('list' object has no attribute 'items')"):
        ckpt.load_weights(_module(), tmp_path)
    sums.write_text(json.dumps({"other.safetensors": "0"}))
    with _raises(
        f"{weights}: not in checksums.json, so its bytes cannot be verified; every weight file must be listed "
        "(save the checkpoint again, or remove checksums.json to load it unchecked)"
    ):
        ckpt.load_weights(_module(), tmp_path)
    sums.write_text(json.dumps({"model.safetensors": "0"}))
    with _raises(
        f"{weights}: corrupt: its bytes do not match the sha256 recorded in checksums.json at save time "
        "(a damaged download or disk); download or copy the checkpoint again"
    ):
        ckpt.load_weights(_module(), tmp_path)
    index.write_text("[" * 100_000)
    with _raises(f"{index}: not a valid shard index: nested too deeply"):
        ckpt.weight_files(tmp_path)
    index.write_text("{}")
    with _raises(f"{index}: not a valid shard index ('weight_map')"):
        ckpt.weight_files(tmp_path)
    index.unlink()
    weights.unlink()
    with _raises(f"{weights}: missing; a checkpoint folder needs config.json and model.safetensors"):
        ckpt.weight_files(tmp_path)
