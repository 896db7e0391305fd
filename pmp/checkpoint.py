"""Checkpoint folders: ``config.json`` + ``model.safetensors`` + ``README.md`` (the model card).

Loading is strict and never unpickles anything. Every way a checkpoint can be broken (missing file,
truncated or corrupt safetensors, a config that does not parse, weights that do not match the config)
ends in one :class:`CheckpointError` naming the file and the problem, because a half-loaded model
gives silently wrong segmentations.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pmp.config import SegmenterConfig

if TYPE_CHECKING:
    from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"  # Hugging Face's layout for weights split into shards
CHECKSUMS_NAME = "checksums.json"  # {weight file name: sha256}, written at save time, verified at load
CARD_NAME = "README.md"
CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME, "model-*-of-*.safetensors", CHECKSUMS_NAME, CARD_NAME)
# An open_clip folder (train.train_clip writes one; the bundled tiny CLIP is one): what a segmenter whose
# config names clip.checkpoint loads its CLIP weights from.
CLIP_CONFIG_NAME = "open_clip_config.json"
CLIP_WEIGHTS_NAME = "open_clip_model.safetensors"
CLIP_FILES = (CLIP_CONFIG_NAME, CLIP_WEIGHTS_NAME, CARD_NAME)
CLIP_PREFIX = "clip."  # a Segmenter's CLIP weights in its state dict
MAX_SHARD_SIZE = "9MB"  # a Space refuses files over 10 MB without LFS
# The bundled models: pmp/checkpoints in an installed wheel, checkpoints/ beside the package in the repository.
_INSTALLED_DIR = Path(__file__).resolve().parent / "checkpoints"
BUNDLED_DIR = _INSTALLED_DIR if _INSTALLED_DIR.is_dir() else Path(__file__).resolve().parent.parent / "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint could not be loaded; the message names the file and what is wrong with it."""


def looks_like_hub_repo(text: str) -> bool:
    """``owner/name`` that is not a local path: what :func:`resolve_checkpoint` fetches from the Hub."""
    return text.count("/") == 1 and not text.startswith((".", "/")) and not Path(text).exists()


def resolve_checkpoint(
    name_or_path: str | os.PathLike | None, default: str = "pmp", files: tuple[str, ...] = CHECKPOINT_FILES
) -> Path:
    """Return a local folder for a bundled name, a local folder, or a Hugging Face Hub repo id.

    Hub ids are fetched with ``snapshot_download``, which serves from the local cache when
    ``HF_HUB_OFFLINE=1`` (or when the network is down and the files are cached). ``files``: the folder's
    layout, a segmenter's (the default) or an open_clip folder's (:data:`CLIP_FILES`); its first entry
    is the config file that marks such a folder, its second the weights.
    """
    if name_or_path is None:
        name_or_path = default
    path = Path(name_or_path)
    bundled = BUNDLED_DIR / str(name_or_path)
    # A folder with a config wins; then a bundled name (so "pmp" is the model even when run from the
    # repository root, where ./pmp is the package); then any other existing folder (load_config explains).
    if path.is_dir() and (path / files[0]).is_file():
        return path
    if not path.is_absolute() and bundled.is_dir():
        return bundled
    if path.is_dir():
        return path
    text = str(name_or_path)
    if not looks_like_hub_repo(text):
        raise CheckpointError(
            f"checkpoint {text!r} not found: expected a folder with {files[0]} and {files[1]}, "
            f"a bundled name ({', '.join(sorted(p.name for p in BUNDLED_DIR.glob('*') if p.is_dir())) or 'none'}), "
            "or a Hugging Face Hub repo id such as 'user/pmp-ovseg-swinb'"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=text, allow_patterns=list(files)))
    except LocalEntryNotFoundError as error:
        raise CheckpointError(
            f"Hub checkpoint {text!r} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): download it once with network access"
        ) from error
    except Exception as error:  # RepositoryNotFoundError, HTTP errors: all mean "cannot get it"
        raise CheckpointError(f"could not fetch Hub checkpoint {text!r}: {error}") from error


def load_config(folder: Path) -> SegmenterConfig:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; a checkpoint folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        return SegmenterConfig.from_dict(json.loads(config_path.read_text()))
    except RecursionError:  # nested thousands deep: no config is
        raise CheckpointError(f"{config_path}: not a valid segmenter config: nested too deeply") from None
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path}: not a valid segmenter config: {error}") from error


def open_clip_weights(checkpoint: str | os.PathLike) -> Path:
    """The weights file of an open_clip folder (a bundled name, a local folder or a Hub repo id)."""
    weights = resolve_checkpoint(checkpoint, files=CLIP_FILES) / CLIP_WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(
            f"{weights}: missing; {str(checkpoint)!r} is not an open_clip folder, which needs "
            f"{CLIP_CONFIG_NAME} and {CLIP_WEIGHTS_NAME}"
        )
    return weights


def referenced_clip_weights(checkpoint: str, sha256: str) -> Path:
    """The weights file of the open_clip folder a segmenter's config references (``clip.checkpoint``),
    after checking that its bytes are the ones the segmenter was saved with: a CLIP replaced under the
    same name would otherwise load silently and change every p_hat."""
    weights = open_clip_weights(checkpoint)
    found = file_sha256(weights)
    if found != sha256:
        raise CheckpointError(
            f"{weights}: not the CLIP this segmenter was saved with (sha256 {found[:12]}..., the config pins "
            f"{sha256[:12]}...): the folder {checkpoint!r} now holds other weights. Restore that CLIP, or save "
            "the segmenter again with this one (Segmenter.reference_clip)"
        )
    return weights


def load_weights(module: "nn.Module", folder: Path, without: str | None = None) -> None:
    """Load ``model.safetensors`` (or its shards) into ``module`` strictly, casting to the module's dtypes.

    Each weight file is checked against ``checksums.json`` first: safetensors validates its header, not
    the tensor bytes, so without the checksum a flipped bit would load silently and change the outputs.
    A folder without ``checksums.json`` (saved by other tools) loads unchecked. ``without``: a key prefix
    the checkpoint leaves out because those weights come from elsewhere (a referenced CLIP's ``clip.``);
    every other key must be there.
    """
    state: dict[str, torch.Tensor] = {}
    weights = weight_files(folder)
    verify_checksums(folder, weights)
    for weights_path in weights:
        try:
            state.update(load_file(str(weights_path)))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{weights_path}: truncated or corrupt safetensors file ({error})") from error
    weights_path = folder / (INDEX_NAME if (folder / INDEX_NAME).is_file() else WEIGHTS_NAME)
    expected = {key: value for key, value in module.state_dict().items() if not (without and key.startswith(without))}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path}: weights do not match {folder / CONFIG_NAME}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{weights_path}: tensor {key!r} has shape {tuple(tensor.shape)} but the config builds "
                f"{tuple(expected[key].shape)}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{weights_path}: tensor {key!r} holds NaN or inf values")
        state[key] = tensor.to(expected[key].dtype)
    module.load_state_dict(state, strict=without is None)  # with ``without``: every other key checked above


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(folder: Path, weights: list[Path]) -> None:
    """Raise CheckpointError unless every file of ``weights`` has the bytes recorded at save time.

    ``checksums.json`` may name only files of the folder itself (a name such as ``../x.bin`` would make
    the loader read any file on the machine), and must name every weight file: a shard it leaves out
    would load unverified.
    """
    path = folder / CHECKSUMS_NAME
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())
        items = {str(name): str(digest) for name, digest in recorded.items()}
    except RecursionError:
        raise CheckpointError(f"{path}: not a valid checksum file: nested too deeply") from None
    except (json.JSONDecodeError, AttributeError) as error:
        raise CheckpointError(f"{path}: not a valid checksum file ({error})") from error
    for name in items:
        if Path(name).name != name or name in (".", ".."):
            raise CheckpointError(f"{path}: names {name!r}, which is not a file of this folder; names must be bare")
    for weights_path in weights:
        digest = items.get(weights_path.name)
        if digest is None:
            raise CheckpointError(
                f"{weights_path}: not in {CHECKSUMS_NAME}, so its bytes cannot be verified; every weight file "
                "must be listed (save the checkpoint again, or remove checksums.json to load it unchecked)"
            )
        if file_sha256(weights_path) != digest:
            raise CheckpointError(
                f"{weights_path}: corrupt: its bytes do not match the sha256 recorded in {CHECKSUMS_NAME} at save "
                "time (a damaged download or disk); download or copy the checkpoint again"
            )


def weight_files(folder: Path) -> list[Path]:
    """``model.safetensors``, or the shards that ``model.safetensors.index.json`` lists."""
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        try:
            shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        except RecursionError:
            raise CheckpointError(f"{index_path}: not a valid shard index: nested too deeply") from None
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(f"{index_path}: not a valid shard index ({error})") from error
        outside = [name for name in shards if not isinstance(name, str) or Path(name).name != name]
        if outside:
            raise CheckpointError(f"{index_path}: lists {outside[0]!r}, which is not a file of this folder")
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise CheckpointError(f"{folder / missing[0]}: missing; {INDEX_NAME} lists it")
        return [folder / name for name in shards]
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: missing; a checkpoint folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    return [weights_path]


def save_checkpoint(
    module: "nn.Module",
    config: SegmenterConfig,
    folder: str | os.PathLike,
    *,
    model_card_text: str | None = None,
    half_precision: bool | tuple[str, ...] = False,
    max_shard_size: int | str = MAX_SHARD_SIZE,
    without: str | None = None,
) -> Path:
    """Write config, weights and card, each atomically (temp file, fsync, rename).

    Weights over ``max_shard_size`` are split into ``model-0000k-of-0000n.safetensors`` shards with a
    ``model.safetensors.index.json``, Hugging Face's layout, so no file needs Git LFS on a Space.
    ``half_precision`` stores floating tensors as float16 (the bundled models use it to stay small):
    all of them (True) or those whose keys start with one of the given prefixes (``("clip.",)``: a CLIP
    that was itself stored in float16 loses nothing). They are cast back to the module's dtype on load.
    ``without``: a key prefix left out (a referenced CLIP's ``clip.``, loaded from its own folder).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in module.state_dict().items():
        if without and key.startswith(without):
            continue
        tensor = tensor.detach().cpu().contiguous()
        halve = half_precision if isinstance(half_precision, bool) else key.startswith(tuple(half_precision))
        if halve and tensor.is_floating_point():
            tensor = tensor.half()
        state[key] = tensor
    for stale in [
        folder / WEIGHTS_NAME,
        folder / INDEX_NAME,
        folder / CHECKSUMS_NAME,
        *folder.glob("model-*-of-*.safetensors"),
    ]:
        stale.unlink(missing_ok=True)
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        shard = {key: state[key] for key in keys}
        atomic_write(
            folder / filename, lambda path, shard=shard: save_file(shard, str(path), metadata={"format": "pt"})
        )
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        atomic_write(folder / INDEX_NAME, lambda path: Path(path).write_text(json.dumps(index, indent=2) + "\n"))
    checksums = {name: file_sha256(folder / name) for name in sorted(split.filename_to_tensors)}
    atomic_write(folder / CHECKSUMS_NAME, lambda path: Path(path).write_text(json.dumps(checksums, indent=2) + "\n"))
    atomic_write(
        folder / CONFIG_NAME, lambda path: Path(path).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    )
    card = model_card_text if model_card_text is not None else model_card(config)
    card = with_clip_reference_note(card, config)
    atomic_write(folder / CARD_NAME, lambda path: Path(path).write_text(card))
    return folder


CLIP_REFERENCE_TITLE = "## Its CLIP"


def with_clip_reference_note(card: str, config: SegmenterConfig) -> str:
    """The model card, saying where the CLIP comes from when this checkpoint does not carry it (a card
    given back when a checkpoint is saved again keeps one note, for the CLIP it references now)."""
    card = card.split("\n" + CLIP_REFERENCE_TITLE + "\n")[0]
    if not config.clip.checkpoint:
        return card
    return (
        card.rstrip("\n") + f"\n\n{CLIP_REFERENCE_TITLE}\n\nNot stored here: the CLIP is the open_clip folder "
        f"`{config.clip.checkpoint}` (a bundled name, a local folder or a Hub repo id; its "
        f"`{CLIP_WEIGHTS_NAME}` has sha256 `{config.clip.checkpoint_sha256}`), which loading reads and checks.\n"
    )


def atomic_write(target: Path, write: Callable[[str], object]) -> None:
    """Call ``write(temp_path)``, fsync, then rename onto ``target``: readers see the old file or the new one."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp_name)
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a checkpoint is meant to be shared
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


def model_card(
    config: SegmenterConfig, *, training: str | None = None, command: str | None = None, metrics: dict | None = None
) -> str:
    """A Hugging Face model card (``README.md``) for a saved segmenter; the training paragraph, command
    and metrics are added when the checkpoint comes from a training run."""
    mode = config.decoder.text_mode
    kind = "baseline (no text conditioning)" if mode == "none" else f"text conditioning `{mode}`"
    lines = [
        "---",
        "library_name: pmp",
        "tags:",
        "- open-vocabulary-segmentation",
        "- image-segmentation",
        "---",
        "",
        f"# {config.name or 'PMP segmenter'} (text mode `{mode}`)",
        "",
        f"Two-stage open-vocabulary segmenter, {kind}; backbone `{config.backbone.kind}:{config.backbone.name}`, "
        f"pixel decoder `{config.pixel_decoder.kind}`, decoder `{config.decoder.kind}` with "
        f"{config.decoder.num_queries} queries.",
        "",
    ]
    if training:
        lines += [training, ""]
    if command:
        lines += ["## Training command", "", "```", command, "```", ""]
    floats = {key: value for key, value in (metrics or {}).items() if isinstance(value, float)}
    if floats:
        lines += (
            ["## Metrics", "", "| metric | value |", "|---|---|"]
            + [f"| {k} | {v:.4f} |" for k, v in floats.items()]
            + [""]
        )
    lines += [
        "```python",
        "from pmp import Segmenter",
        "",
        'seg = Segmenter.from_pretrained("<this folder or repo id>")',
        'out = seg("image.jpg", "sky, house, red car")',
        "```",
        "",
    ]
    return "\n".join(lines)
