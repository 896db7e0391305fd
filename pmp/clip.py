"""The CLIP used by both stages: cached prompt embeddings, dense per-pixel features and masked crops.

:class:`CLIPModel` wraps an ``open_clip`` CLIP. It never downloads: weights come from a local file or,
for an open_clip pretrained tag, from the local Hugging Face cache only.

Three ways of classifying a mask proposal live here, because the paper's stage 2 and its baseline
(OVSeg) differ in exactly this:

* :meth:`CLIPModel.encode_text` — the zero-shot classifier: each prompt is filled into every template,
  encoded, normalised and averaged (the CLIP recipe), and cached in a bounded LRU because the demo asks
  for the same class names again and again.
* :meth:`CLIPModel.dense_features` + :meth:`CLIPModel.pool_classify` — one image forward, then every
  proposal is a mask-weighted average of per-pixel CLIP embeddings (MaskCLIP's value-path trick). Cheap:
  cost does not grow with the number of proposals.
* :meth:`CLIPModel.crop_classify` — OVSeg's masked crops: one CLIP image forward per proposal on the
  proposal's box with the background filled with CLIP's mean colour. Cost grows with the number of proposals.
"""

from __future__ import annotations

import collections
import copy
import functools
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer, text_global_pool
from open_clip.modified_resnet import ModifiedResNet
from torch import Tensor, nn
from torchvision.ops import roi_align

from pmp.config import CLIP_MEAN, CLIP_STD, CLIPConfig

TEXT_BATCH = 256  # (prompt, template) strings per text-tower forward
CROP_BATCH = 64  # masked crops per image-tower forward
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_EPS = 1e-6


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


def _real_lengths(tokens: Tensor) -> Tensor:
    """(S, L) BPE ids, padded with trailing zeros -> (S,) position of the last real token + 1.

    Not a count of non-zero ids: id 0 is also the token "!", which may occur inside a prompt.
    """
    positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
    return ((tokens != 0) * positions).amax(dim=1)


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
        raise ValueError(
            f"unsupported CLIP weights file {str(path)!r}; accepted: {', '.join(WEIGHT_SUFFIXES)}"
        )
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"CLIP weights file {str(path)!r} does not hold a state dict of tensors")
    for prefix in ("module.", "clip.", "model."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


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
    """open_clip's checkpoint fix-ups (third-party layouts, position-embedding resizing), then strict load."""
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
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"CLIP weights {source!r} do not fit the configured model: missing keys "
            f"{result.missing_keys[:8]}{'...' if len(result.missing_keys) > 8 else ''}, unexpected keys "
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


class CLIPModel(nn.Module):
    """An open_clip CLIP plus what two-stage open-vocabulary segmentation needs from it.

    ``.model`` is the open_clip model (state-dict keys ``model.*``). ``.mean``/``.std`` are the image
    normalisation the weights expect, ``.image_size`` the image tower's native square size,
    ``.embed_dim`` the joint embedding width and ``.tokenizer`` open_clip's tokenizer.

    Text cache: a bounded LRU keyed by ``(weights key, templates, prompt)`` holding each prompt's
    template-averaged normalised embedding (detached). The weights key combines a counter bumped
    whenever weights are loaded (``_load_from_state_dict``, which also runs when a parent module is
    loaded) or moved/cast (``_apply``) with the sum of the text parameters' in-place version counters,
    which optimizer steps and ``copy_`` bump; so a stale entry can only be served after writes that
    bypass autograd's version counter (``param.data.mul_``): call :meth:`clear_cache` after those.
    When gradients can flow into the text tower (grad mode on and a text parameter requires grad) the
    cache is bypassed entirely, so training gets a differentiable result.
    """

    def __init__(
        self,
        model: nn.Module,
        config: CLIPConfig,
        tokenizer: SimpleTokenizer,
        embed_dim: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        for template in config.templates:
            if template.count("{}") != 1:
                raise ValueError(f"CLIP template {template!r} must contain exactly one '{{}}' placeholder")
        if not config.templates:
            raise ValueError("CLIPConfig.templates is empty; give at least one template such as '{}'")
        if config.text_cache_size < 0:
            raise ValueError(f"CLIPConfig.text_cache_size must be >= 0, got {config.text_cache_size}")
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        self.embed_dim = int(embed_dim)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        size = getattr(model.visual, "image_size", None)
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise ValueError(f"only square CLIP image towers are supported, got image_size={tuple(size)}")
            size = size[0]
        if size is None:
            raise ValueError(f"cannot tell the native image size of {type(model.visual).__name__}")
        self.image_size = int(size)
        self.context_length = int(getattr(model, "context_length", None) or tokenizer.context_length)
        self._cache: collections.OrderedDict[tuple, Tensor] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._weights_version = 0

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(cls, cfg: CLIPConfig) -> "CLIPModel":
        """Build from the config; never downloads.

        ``cfg.model_cfg`` (a dict of open_clip ``CLIP`` kwargs) wins over ``cfg.model_name``. Random
        init unless ``cfg.pretrained`` names a local weights file or an open_clip tag that is already in
        the local Hugging Face cache (else FileNotFoundError saying what to fetch).
        """
        pretrained_cfg: dict[str, Any] = {}
        weights_path: str | None = None
        if cfg.pretrained:
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
        if pretrained_cfg.get("quick_gelu"):
            model_cfg["quick_gelu"] = True  # OpenAI weights were trained with QuickGELU
        model = _instantiate(model_cfg)
        if weights_path is not None:
            _load_into(model, read_weights_file(weights_path), weights_path)
        tokenizer = _tokenizer_for(model_cfg, cfg.model_name if cfg.model_cfg is None else "")
        mean = pretrained_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = pretrained_cfg.get("std", open_clip.OPENAI_DATASET_STD)
        model.eval()
        return cls(model, cfg, tokenizer, embed_dim=model_cfg["embed_dim"], mean=mean, std=std)

    # ------------------------------------------------------------------ helpers

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def logit_scale(self) -> Tensor:
        """The CLIP's own logit multiplier, ``exp`` of its stored log-scale (a 0-d tensor)."""
        return self.model.logit_scale.exp().reshape(())

    def normalize(self, images: Tensor) -> Tensor:
        """(B,3,H,W) RGB in [0, 1] -> normalised with this CLIP's mean/std."""
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std

    def count_tokens(self, text: str) -> int:
        """Tokens the text tower sees for ``text``, start and end tokens included."""
        return len(self.tokenizer.encode(text)) + 2

    # ------------------------------------------------------------------ text

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # Runs for this module whether load_state_dict is called on it or on a parent (the Segmenter).
        self._weights_version += 1
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "CLIPModel":
        # .to(device)/.half() replace parameter tensors: cached embeddings of the old ones are stale.
        self._weights_version += 1
        return super()._apply(fn, *args, **kwargs)

    def _text_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.model.named_parameters() if not name.startswith("visual.")]

    def _weights_key(self) -> tuple:
        versions = sum(getattr(p, "_version", 0) for p in self._text_parameters())
        return (self._weights_version, versions, str(self.device), str(self.model.logit_scale.dtype))

    def _can_truncate(self) -> bool:
        """True when running only the real tokens gives the same embedding as the padded forward.

        Needs a causal mask (later padding cannot influence earlier tokens) and pooling at a real token
        (EOT/first). CustomTextCLIP towers and non-causal ones run the full context instead.
        """
        m = self.model
        return (
            isinstance(m, open_clip.CLIP)
            and getattr(m, "attn_mask", None) is not None
            and getattr(m, "text_pool_type", None) in ("argmax", "eos", "first")
        )

    def text_forward(self, tokens: Tensor) -> Tensor:
        """(S, context_length) token ids -> (S, C) unnormalised text embeddings.

        Runs the text transformer on only the longest real sequence of the batch (up to its EOT)
        instead of the full context length, which equals ``model.encode_text`` because the mask is
        causal and pooling happens at the EOT; falls back to ``model.encode_text`` otherwise.
        """
        m = self.model
        tokens = tokens.to(self.device)
        if not self._can_truncate():
            return m.encode_text(tokens)
        length = int(_real_lengths(tokens).max())
        tokens = tokens[:, :length]
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast_dtype)  # (S, L, W)
        x = x + m.positional_embedding[:length].to(cast_dtype)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = text_global_pool(x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
        return x

    def _tokenize(self, labels: Sequence[str], prompts: Sequence[str]) -> Tensor:
        # open_clip's tokenizer silently truncates; a cut-off prompt would be a different class.
        for label, prompt in zip(labels, prompts):
            count = self.count_tokens(prompt)
            if count > self.context_length:
                raise ValueError(
                    f"prompt {label!r} is too long for CLIP: {prompt!r} has {count} tokens, the text "
                    f"tower takes at most {self.context_length} (start and end tokens included)"
                )
        return self.tokenizer(list(prompts))

    def _fits(self, phrase: str) -> bool:
        """Every template filled with ``phrase`` fits the text tower's context."""
        return all(self.count_tokens(t.replace("{}", phrase)) <= self.context_length for t in self.config.templates)

    def phrases(self, label: str) -> list[str]:
        """What a label is encoded by: the label itself, or - when a filled template would not fit the text
        tower and the label is a comma-separated synonym list (ADE-847's "bus, autobus, coach, ...") - each
        synonym that fits, whose embeddings are averaged like the templates' are. Any other label that does
        not fit is left whole, and :meth:`_tokenize` names it in its error."""
        if "," not in label or self._fits(label):
            return [label]
        synonyms = [word.strip() for word in label.split(",") if word.strip()]
        fitting = [word for word in synonyms if self._fits(word)]
        return fitting or [label]

    def _embed_labels(self, labels: Sequence[str]) -> Tensor:
        """(M,) labels -> (M, C) normalised embeddings averaged over templates (and synonyms, see
        :meth:`phrases`); one batched pass."""
        templates = self.config.templates
        prompts, owners, owner_index = [], [], []
        for index, label in enumerate(labels):
            for phrase in self.phrases(label):
                for template in templates:
                    prompts.append(template.replace("{}", phrase))
                    owners.append(label)
                    owner_index.append(index)
        tokens = self._tokenize(owners, prompts)  # (P, context), P = sum over labels of phrases x templates
        # Sort by length so that each chunk is truncated to similar lengths; scatter back afterwards.
        order = torch.argsort(_real_lengths(tokens))
        embeds = []
        for start in range(0, len(prompts), TEXT_BATCH):
            chunk = order[start:start + TEXT_BATCH]
            embeds.append(F.normalize(self.text_forward(tokens[chunk]), dim=-1))
        flat = torch.cat(embeds)
        flat = flat[torch.argsort(order.to(flat.device))]  # undo the sort: (P, C)
        owner = torch.tensor(owner_index, device=flat.device)
        summed = flat.new_zeros(len(labels), flat.shape[1]).index_add_(0, owner, flat)  # (M, C)
        return F.normalize(summed, dim=-1)  # the normalised mean

    def encode_text(self, labels: Sequence[str]) -> Tensor:
        """Prompts -> (M, C) L2-normalised CLIP text embeddings, averaged over ``config.templates``.

        Uncached prompts are encoded in one batched pass (chunks of TEXT_BATCH strings). A synonym list too
        long for the context is encoded by its synonyms (:meth:`phrases`); any other prompt whose filled
        template exceeds the context length raises ValueError naming the prompt. The cache is
        used only when no gradient can reach the text tower: run inference under ``torch.no_grad()`` /
        ``torch.inference_mode()`` or with the text parameters frozen.
        """
        if isinstance(labels, str):
            raise ValueError("encode_text takes a list of prompts, got a single string; wrap it in a list")
        labels = list(labels)
        for label in labels:
            if not isinstance(label, str):
                raise ValueError(f"prompts must be strings, got {type(label).__name__}: {label!r}")
        if not labels:
            return torch.zeros(0, self.embed_dim, device=self.device, dtype=self.model.logit_scale.dtype)
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self._text_parameters())
        if needs_grad or self.config.text_cache_size == 0:
            return self._embed_labels(labels)

        weights_key = self._weights_key()
        key_of = {label: (weights_key, self.config.templates, label) for label in labels}
        found: dict[str, Tensor] = {}
        with self._cache_lock:
            for label in dict.fromkeys(labels):
                entry = self._cache.get(key_of[label])
                if entry is not None:
                    self._cache.move_to_end(key_of[label])
                    found[label] = entry
                    self._hits += 1
                else:
                    self._misses += 1
        missing = [label for label in dict.fromkeys(labels) if label not in found]
        if missing:
            with torch.no_grad():
                fresh = self._embed_labels(missing).detach()
            with self._cache_lock:
                for label, embed in zip(missing, fresh):
                    found[label] = embed
                    self._cache[key_of[label]] = embed
                    self._cache.move_to_end(key_of[label])
                while len(self._cache) > self.config.text_cache_size:
                    self._cache.popitem(last=False)
        # stack() makes a new tensor, so entries made under inference_mode come back as normal tensors
        # that autograd code (e.g. a decoder being trained) may use.
        return torch.stack([found[label].to(self.device) for label in labels])

    def cached_labels(self, labels: Sequence[str]) -> set[str]:
        """The labels whose embeddings the cache holds for the current weights and templates.

        Such a label was encoded before, so it is known to fit the context length: callers that check
        token limits up front (the Segmenter) skip re-tokenising it. Neither a hit nor a miss is counted.
        """
        if self.config.text_cache_size == 0:
            return set()
        weights_key = self._weights_key()
        with self._cache_lock:
            return {label for label in labels if (weights_key, self.config.templates, label) in self._cache}

    def cache_info(self) -> dict[str, int]:
        """Hits and misses counted per distinct prompt of each encode_text call; current and max size."""
        with self._cache_lock:
            return {"hits": self._hits, "misses": self._misses, "size": len(self._cache),
                    "max_size": self.config.text_cache_size}

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()
            self._hits = 0
            self._misses = 0

    # ------------------------------------------------------------------ dense image features

    def dense_features(self, images: Tensor) -> Tensor:
        """(B,3,H,W) CLIP-normalised images -> (B,C,h,w) per-pixel joint-space embeddings, L2-normalised.

        ModifiedResNet (h = H/32): MaskCLIP — the attention pool's value and output projections applied
        to every layer-4 position (query/key and the positional embedding skipped), i.e. what the pooled
        token would be if each position attended only to itself. Any input size works.
        ViT (h = H/patch): positional embedding interpolated (bicubic) to the input grid, all blocks
        but the last as usual; in the last block each patch token attends only to itself (MaskCLIP's
        value path: residual + out_proj(v_proj(ln_1 x)), then the MLP), then ln_post and proj.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"dense_features takes (B,3,H,W) images, got shape {tuple(images.shape)}")
        visual = self.model.visual
        images = images.to(device=self.device)
        if isinstance(visual, ModifiedResNet):
            dense = self._dense_resnet(visual, images)
        elif isinstance(visual, VisionTransformer) and visual.attn_pool is None:
            dense = self._dense_vit(visual, images)
        else:
            raise NotImplementedError(
                f"dense_features supports open_clip ModifiedResNet and VisionTransformer (without an "
                f"attentional pooler) image towers, not {type(visual).__name__}; use stage2_mode='crop'"
            )
        return F.normalize(dense, dim=1)

    def dense_features_from_trunk(self, trunk: Tensor) -> Tensor:
        """(B,D,h,w) layer-4 output of this CLIP's ModifiedResNet -> (B,C,h,w) like :meth:`dense_features`.

        For a stage 1 that already ran this very image tower on the same pixels (FC-CLIP's frozen
        backbone, ``backbone.kind="clip"``): only the MaskCLIP head is left to run, instead of the whole
        tower a second time. Equal to ``dense_features(images)`` when ``trunk`` came from the same
        CLIP-normalised ``images``.
        """
        visual = self.model.visual
        if not isinstance(visual, ModifiedResNet):
            raise NotImplementedError(
                f"dense_features_from_trunk needs an open_clip ModifiedResNet image tower, not {type(visual).__name__}"
            )
        if trunk.ndim != 4:
            raise ValueError(f"dense_features_from_trunk takes (B,D,h,w) layer-4 features, got shape {tuple(trunk.shape)}")
        return F.normalize(self._maskclip_head(visual, trunk.to(device=self.device, dtype=visual.conv1.weight.dtype)), dim=1)

    @classmethod
    def _dense_resnet(cls, visual: ModifiedResNet, images: Tensor) -> Tensor:
        x = images.to(visual.conv1.weight.dtype)
        x = visual.stem(x)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))  # (B, 32*width, h, w)
        return cls._maskclip_head(visual, x)

    @staticmethod
    def _maskclip_head(visual: ModifiedResNet, x: Tensor) -> Tensor:
        """(B, D, h, w) layer-4 features -> (B, C, h, w): the attention pool's value and output projections."""
        pool = visual.attnpool
        x = x.permute(0, 2, 3, 1)  # (B, h, w, D)
        x = pool.c_proj(pool.v_proj(x))  # (B, h, w, C)
        return x.permute(0, 3, 1, 2)

    @staticmethod
    def _dense_vit(visual: VisionTransformer, images: Tensor) -> Tensor:
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, W, gh, gw)
        batch, width, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, W)
        pos = visual.positional_embedding.to(x.dtype)
        cls_pos, grid_pos = pos[:1], pos[1:]
        g0, g1 = visual.grid_size
        if (gh, gw) != (g0, g1):
            grid_pos = grid_pos.reshape(1, g0, g1, width).permute(0, 3, 1, 2)
            grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode="bicubic", align_corners=False)
            grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(gh * gw, width)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, width).expand(batch, 1, width)
        x = torch.cat([cls, x], dim=1) + torch.cat([cls_pos, grid_pos])[None]  # (B, 1+gh*gw, W)
        x = visual.ln_pre(x)
        blocks = visual.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        last = blocks[-1]
        if isinstance(last, ResidualAttentionBlock) and getattr(last.attn, "_qkv_same_embed_dim", False) \
                and not hasattr(last, "ln_1_kv"):
            attn = last.attn
            w_v = attn.in_proj_weight[2 * width:]
            b_v = attn.in_proj_bias[2 * width:] if attn.in_proj_bias is not None else None
            v = F.linear(last.ln_1(x), w_v, b_v)
            x = x + last.ls_1(attn.out_proj(v))
            x = x + last.ls_2(last.mlp(last.ln_2(x)))
        else:  # custom blocks: run as trained
            x = last(x)
        x = visual.ln_post(x[:, 1:])  # patch tokens: (B, gh*gw, W)
        if visual.proj is not None:
            x = x @ visual.proj
        return x.transpose(1, 2).reshape(batch, -1, gh, gw)

    def pool_classify(self, dense: Tensor, masks: Tensor, text: Tensor) -> Tensor:
        """Mask-pooled dense features -> (B,N,M) class probabilities.

        dense (B,C,h,w) from :meth:`dense_features`; masks (B,N,H',W') soft in [0,1], shrunk to (h,w) by
        area averaging (bilinear where they must grow); text (M,C) normalised.
        Each proposal's embedding is the mask-weighted mean of the dense features, re-normalised; an
        empty mask pools to zero and so gets uniform probabilities.
        """
        if dense.ndim != 4 or masks.ndim != 4 or text.ndim != 2:
            raise ValueError(
                f"pool_classify takes dense (B,C,h,w), masks (B,N,H,W), text (M,C); got "
                f"{tuple(dense.shape)}, {tuple(masks.shape)}, {tuple(text.shape)}"
            )
        if masks.shape[0] != dense.shape[0] or text.shape[1] != dense.shape[1]:
            raise ValueError(
                f"pool_classify shapes disagree: dense {tuple(dense.shape)}, masks {tuple(masks.shape)}, "
                f"text {tuple(text.shape)}"
            )
        batch, num, _, _ = masks.shape
        h, w = dense.shape[-2:]
        masks = masks.to(device=dense.device, dtype=dense.dtype)
        if masks.shape[-2] >= h and masks.shape[-1] >= w and masks.shape[-2:] != (h, w):
            # Area averaging: each dense cell is weighted by the share of it the mask covers, so small
            # masks never fall between the sampling points of a plain bilinear shrink.
            masks = F.adaptive_avg_pool2d(masks, (h, w))
        elif masks.shape[-2:] != (h, w):
            masks = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        masks = masks.clamp(0, 1)
        pooled = torch.einsum("bnhw,bchw->bnc", masks, dense) / (masks.sum(dim=(2, 3))[..., None] + _EPS)
        pooled = F.normalize(pooled, dim=-1)  # (B, N, C); zero stays zero
        logits = self.logit_scale.to(dense.dtype) * pooled @ text.to(dense).T  # (B, N, M)
        return logits.softmax(dim=-1)

    # ------------------------------------------------------------------ masked crops

    def crop_classify(
        self,
        image: np.ndarray | Tensor,
        masks: np.ndarray | Tensor,
        text: Tensor,
        top_k_indices: Sequence[int] | Tensor | None = None,
    ) -> Tensor:
        """OVSeg's masked-crop classification -> (N,M) probabilities, or (K,M) for ``top_k_indices``.

        image: (H,W,3) uint8 numpy or (3,H,W) float tensor in [0,1]; masks (N,H,W) in [0,1] (resized to
        the image if their size differs); text (M,C) normalised. Each mask is binarised at 0.5; its tight
        box is grown to a square about its centre (aspect kept, as padding with the mean colour would);
        the square is cropped and resized to ``image_size`` with one batched ``roi_align`` on the
        normalised image, and every pixel outside the (equally roi_aligned) mask — including outside the
        image — is set to CLIP's mean colour, which is zero after normalisation. With
        ``top_k_indices`` only those proposals are cropped and rows come back in that order. Empty
        masks get uniform probabilities.
        """
        img = self._image_tensor(image)  # (3, H, W) float in [0, 1]
        masks = torch.as_tensor(masks).to(device=img.device, dtype=torch.float32)
        if masks.ndim != 3:
            raise ValueError(f"crop_classify takes masks (N,H,W), got shape {tuple(masks.shape)}")
        if text.ndim != 2:
            raise ValueError(f"crop_classify takes text (M,C), got shape {tuple(text.shape)}")
        if top_k_indices is not None:
            index = torch.as_tensor(top_k_indices, dtype=torch.long, device=masks.device).reshape(-1)
            if index.numel() and (index.min() < 0 or index.max() >= masks.shape[0]):
                raise ValueError(f"top_k_indices must lie in [0, {masks.shape[0]}), got {index.tolist()}")
            masks = masks[index]
        height, width = img.shape[-2:]
        if masks.shape[-2:] != (height, width) and masks.shape[0]:
            masks = F.interpolate(masks[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        num, num_classes = masks.shape[0], text.shape[0]
        probs = torch.full((num, num_classes), 1.0 / max(num_classes, 1), device=self.device)
        binary = masks > 0.5  # (N, H, W)
        rows, cols = binary.any(dim=2), binary.any(dim=1)  # (N, H), (N, W)
        nonempty = torch.nonzero(rows.any(dim=1)).flatten()
        if nonempty.numel() == 0 or num_classes == 0:
            return probs
        rows, cols, binary = rows[nonempty], cols[nonempty], binary[nonempty]
        y0 = rows.float().argmax(dim=1)
        y1 = height - rows.flip(1).float().argmax(dim=1)  # exclusive pixel edge
        x0 = cols.float().argmax(dim=1)
        x1 = width - cols.flip(1).float().argmax(dim=1)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half = torch.maximum(x1 - x0, y1 - y0).float() / 2
        boxes = torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1).float()  # (K, 4)
        size = (self.image_size, self.image_size)
        # A zero border (zero = the mean colour after normalisation) stops roi_align from repeating the
        # edge pixel for samples in [-1, 0); boxes move by the border width.
        normalised = F.pad(self.normalize(img[None].float()), (1, 1, 1, 1))  # (1, 3, H+2, W+2)
        inside = F.pad(binary.float(), (1, 1, 1, 1))[:, None]  # (K, 1, H+2, W+2)
        boxes = boxes + 1.0

        features = []
        for start in range(0, len(boxes), CROP_BATCH):
            box = boxes[start:start + CROP_BATCH]
            k = len(box)
            own = torch.arange(start, start + k, device=box.device, dtype=box.dtype)[:, None]
            crops = roi_align(normalised, torch.cat([torch.zeros_like(own), box], 1), size, 1.0, -1, True)
            fill = roi_align(inside[start:start + k], torch.cat([own - start, box], 1),
                             size, 1.0, -1, True)  # (k, 1, S, S) share of mask pixels
            crops = crops * fill  # outside the mask -> 0 == the mean colour after normalisation
            crops = crops.to(device=self.device, dtype=self.model.logit_scale.dtype)
            features.append(F.normalize(self.model.encode_image(crops), dim=-1))
        feats = torch.cat(features)  # (K, C)
        logits = self.logit_scale * feats @ text.to(feats).T
        probs[nonempty.to(probs.device)] = logits.softmax(dim=-1).to(probs.dtype)
        return probs

    def _image_tensor(self, image: np.ndarray | Tensor) -> Tensor:
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"crop_classify takes an (H,W,3) uint8 image or a (3,H,W) float tensor in [0,1]; got "
                    f"a numpy array {image.shape} {image.dtype}"
                )
            return torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1).float() / 255.0
        if isinstance(image, Tensor) and image.ndim == 3 and image.shape[0] == 3 and image.is_floating_point():
            return image.to(self.device)
        raise ValueError(
            f"crop_classify takes an (H,W,3) uint8 image or a (3,H,W) float tensor in [0,1]; got "
            f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))}"
        )
