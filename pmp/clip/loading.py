"""Building an open_clip CLIP without any download: weights from a local file or the local Hub cache.

Adapted from open_clip's factory (``create_model``): the model config comes from open_clip's own
registry or is given inline, and an open_clip pretrained tag is resolved to a file that must already
be in the Hugging Face cache.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from torch import Tensor, nn

from pmp.checkpoint import referenced_clip_weights
from pmp.clip.mask_prompts import add_mask_prompts
from pmp.config import CLIPConfig

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@functools.lru_cache(maxsize=4)
def _simple_tokenizer(context_length: int, clean: str = "lower", reduction_mask: str = "") -> SimpleTokenizer:
    """open_clip's BPE tokenizer; building it parses 49k merges (seconds), so share one per length.

    The tokenizer is read-only after construction apart from its internal BPE memo dict, whose
    single-key writes are safe under the GIL.
    """
    return SimpleTokenizer(context_length=context_length, clean=clean, reduction_mask=reduction_mask)


def _hf_cache_dir() -> str:
    """The Hub cache directory as the environment says *now* (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _looks_like_path(value: str) -> bool:
    """A ``pretrained`` value is a file when it exists, has a directory part or a weights suffix."""
    return os.path.exists(value) or os.sep in value or value.endswith(WEIGHT_SUFFIXES + (".npz",))


def read_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a local weights file: safetensors, or a torch file read with ``weights_only=True``.

    Accepts plain state dicts and ``{"state_dict": ...}`` wrappers; strips the ``module.`` (DDP),
    ``clip.`` (a Segmenter checkpoint) and ``model.`` (a :class:`CLIPModel` state dict) prefixes when
    every key carries them, so the result is keyed like an open_clip model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    elif path.suffix in (".bin", ".pt", ".pth"):
        # weights_only=True: tensors and plain containers only, never arbitrary pickled objects.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"unsupported CLIP weights file {str(path)!r}; accepted: {', '.join(WEIGHT_SUFFIXES)}")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"CLIP weights file {str(path)!r} does not hold a state dict of tensors")
    for prefix in ("module.", "clip.", "open_clip.", "model."):  # DDP, a Segmenter, CLIPModel, other wrappers
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def tag_quick_gelu(cfg: CLIPConfig) -> bool:
    """Whether ``cfg``'s CLIP runs QuickGELU: its own setting, else what open_clip's registry says of its
    pretrained tag (no file is read), else no."""
    if cfg.quick_gelu is not None:
        return cfg.quick_gelu
    if cfg.pretrained and cfg.model_cfg is None and not _looks_like_path(cfg.pretrained):
        return bool((open_clip.pretrained.get_pretrained_cfg(cfg.model_name, cfg.pretrained) or {}).get("quick_gelu"))
    return False


def resolve_pretrained_tag(model_name: str, tag: str) -> tuple[str, dict[str, Any]]:
    """Local path of an open_clip pretrained tag's weights, looked up in the HF cache only.

    Returns ``(path, pretrained_cfg)``; the cfg carries the preprocessing mean/std and ``quick_gelu``.
    Raises FileNotFoundError naming the Hub repo and file to fetch when they are not cached.
    """
    pretrained_cfg = open_clip.pretrained.get_pretrained_cfg(model_name, tag)
    if not pretrained_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(
            f"CLIP pretrained={tag!r} is neither a local weights file nor an open_clip tag of model "
            f"{model_name!r}; tags of that model: {', '.join(tags) or 'none'}"
        )
    hub = pretrained_cfg.get("hf_hub", "")
    cache_dir = _hf_cache_dir()
    if hub:
        from huggingface_hub import hf_hub_download

        # open_clip's convention: "org/repo/file" names a file, "org/repo/" the default file.
        repo_id, filename = os.path.split(hub)
        filename = filename or open_clip.constants.HF_WEIGHTS_NAME
        candidates = list(open_clip.pretrained._get_safe_alternatives(filename)) + [filename]
        for candidate in candidates:
            try:
                path = hf_hub_download(repo_id, candidate, cache_dir=cache_dir, local_files_only=True)
            except Exception:  # noqa: BLE001 - any miss (not cached, offline) means "try the next name"
                continue
            return path, pretrained_cfg
        raise FileNotFoundError(
            f"CLIP weights for model {model_name!r} pretrained={tag!r} are not in the local Hugging Face "
            f"cache ({cache_dir}); this project never downloads at run time. Fetch them once with "
            f"`hf download {repo_id} {candidates[0]}` (or `{filename}`), or set pretrained to a local "
            f"weights file ({', '.join(WEIGHT_SUFFIXES)})."
        )
    url = pretrained_cfg.get("url", "")
    local = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)) if url else ""
    if local and os.path.isfile(local):
        return local, pretrained_cfg
    raise FileNotFoundError(
        f"CLIP weights for model {model_name!r} pretrained={tag!r} are not available locally "
        f"(looked for {local or 'a Hub entry'}); this project never downloads at run time. Download "
        f"{url or 'them'} yourself and set pretrained to that file."
    )


def _load_into(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """open_clip's checkpoint fix-ups (third-party layouts, position-embedding resizing), then strict load.

    Mask prompts (``visual.mask_embedding``) may be missing: a CLIP file from before mask prompt tuning
    starts them at OVSeg's zeros."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, dict(state))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    if getattr(model, "logit_bias", None) is not None and "logit_bias" not in state:
        state["logit_bias"] = torch.zeros_like(model.logit_bias)
    try:
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
        result = model.load_state_dict(state, strict=False)
    except (AssertionError, RuntimeError) as error:  # open_clip asserts on widths; torch on shapes
        raise ValueError(f"CLIP weights {source!r} do not fit the configured model: {error}") from error
    missing = [key for key in result.missing_keys if key != "visual.mask_embedding"]
    if "visual.mask_embedding" in result.unexpected_keys:
        depth = len(state["visual.mask_embedding"])
        raise ValueError(
            f"CLIP weights {source!r} hold OVSeg's mask prompts (visual.mask_embedding, depth {depth}): set "
            f"CLIPConfig.mask_prompt_depth to {depth} to use them"
        )
    if missing or result.unexpected_keys:
        raise ValueError(
            f"CLIP weights {source!r} do not fit the configured model: missing keys "
            f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected keys "
            f"{result.unexpected_keys[:8]}{'...' if len(result.unexpected_keys) > 8 else ''}"
        )


def _named_model_cfg(model_name: str) -> dict[str, Any]:
    """A built-in open_clip config by name (a copy); schema names would read the Hub, so they are refused."""
    if ":" in model_name:
        raise ValueError(
            f"CLIP model_name {model_name!r}: 'hf-hub:'/'local-dir:' names are not supported (they read "
            "remote configs); give CLIPConfig.model_cfg and a local weights file instead"
        )
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip model name {model_name!r}; see open_clip.list_models()")
    return model_cfg


def _instantiate(model_cfg: dict[str, Any]) -> nn.Module:
    """The open_clip model of a config, randomly initialised, without touching the network.

    Built directly rather than through ``open_clip.create_model`` so that no tower can fetch base
    weights (timm/HF towers default to pretrained) and no misleading "initialized randomly" warning
    is logged before our own weights are loaded.
    """
    model_cfg = dict(model_cfg)
    text_cfg = dict(model_cfg.get("text_cfg", {}))
    vision_cfg = dict(model_cfg.get("vision_cfg", {}))
    if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name") or "multimodal_cfg" in model_cfg:
        raise NotImplementedError(
            "CLIPs with Hugging Face text towers/tokenizers or CoCa heads are not supported: they need "
            "files from the Hub; use an open_clip model with the built-in BPE tokenizer"
        )
    if vision_cfg.get("timm_model_name"):
        vision_cfg["timm_model_pretrained"] = False
    model_cfg["text_cfg"], model_cfg["vision_cfg"] = text_cfg, vision_cfg
    custom_text = bool(model_cfg.pop("custom_text", False))
    model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return model_class(**model_cfg)


def _tokenizer_for(model_cfg: dict[str, Any], model_name: str) -> SimpleTokenizer:
    """open_clip's BPE tokenizer with the model's context length and cleaning options."""
    if "siglip" in model_name.lower():
        raise NotImplementedError(f"{model_name!r} needs the SigLIP tokenizer from the Hub; not supported")
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", 77))
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    if set(kwargs) <= {"clean", "reduction_mask"}:
        return _simple_tokenizer(context_length, kwargs.get("clean", "lower"), kwargs.get("reduction_mask", ""))
    return SimpleTokenizer(context_length=context_length, **kwargs)


def load_open_clip(cfg: CLIPConfig) -> tuple[nn.Module, SimpleTokenizer, int, tuple[float, ...], tuple[float, ...]]:
    """(open_clip model in eval mode, tokenizer, joint embedding dim, image mean, image std); never downloads.

    ``cfg.model_cfg`` (a dict of open_clip ``CLIP`` kwargs) wins over ``cfg.model_name``. Random init
    unless ``cfg.pretrained`` names a local weights file or an open_clip tag that is already in the local
    Hugging Face cache (else FileNotFoundError saying what to fetch), or ``cfg.checkpoint`` references an
    open_clip folder (its weights, checked against ``cfg.checkpoint_sha256``).
    """
    pretrained_cfg: dict[str, Any] = {}
    weights_path: str | None = None
    if cfg.checkpoint and not cfg.pretrained:
        weights_path = str(referenced_clip_weights(cfg.checkpoint, cfg.checkpoint_sha256 or ""))
    elif cfg.pretrained:
        if _looks_like_path(cfg.pretrained):
            weights_path = cfg.pretrained
            if not os.path.isfile(weights_path):
                raise FileNotFoundError(f"CLIP pretrained weights file {weights_path!r} does not exist")
        elif cfg.model_cfg is not None:
            raise ValueError(
                f"CLIP pretrained={cfg.pretrained!r} is not a local file; open_clip tags only apply "
                "to a named model (model_cfg is None). Give a weights file path instead."
            )
        else:
            weights_path, pretrained_cfg = resolve_pretrained_tag(cfg.model_name, cfg.pretrained)

    if cfg.model_cfg is not None:
        model_cfg = copy.deepcopy(dict(cfg.model_cfg))
    else:
        model_cfg = _named_model_cfg(cfg.model_name)
    if cfg.quick_gelu is not None:
        model_cfg["quick_gelu"] = cfg.quick_gelu
    elif pretrained_cfg.get("quick_gelu"):
        model_cfg["quick_gelu"] = True  # OpenAI weights were trained with QuickGELU
    model = _instantiate(model_cfg)
    if cfg.mask_prompt_depth:
        add_mask_prompts(model.visual, cfg.mask_prompt_depth)
    if weights_path is not None:
        _load_into(model, read_weights_file(weights_path), weights_path)
    tokenizer = _tokenizer_for(model_cfg, cfg.model_name if cfg.model_cfg is None else "")
    mean = pretrained_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = pretrained_cfg.get("std", open_clip.OPENAI_DATASET_STD)
    model.eval()
    return model, tokenizer, int(model_cfg["embed_dim"]), tuple(mean), tuple(std)
