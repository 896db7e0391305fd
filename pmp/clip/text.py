"""Prompt embeddings: the zero-shot classifier of both stages, with a bounded cache.

Each prompt is filled into every template, encoded, normalised and averaged (the CLIP recipe; a
synonym list too long for the text tower is averaged over its synonyms too). The demo asks for the same
class names again and again, so embeddings are kept in a bounded, thread-safe LRU
(:class:`EmbeddingCache`).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import Tensor, nn

from pmp.prompts import PromptError

TEXT_BATCH = 256  # (prompt, template) strings per text-tower forward


class EmbeddingCache:
    """A bounded, thread-safe LRU of embeddings that counts its hits and misses."""

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError(f"CLIPConfig.text_cache_size must be >= 0, got {max_size}")
        self.max_size = max_size
        self._entries: collections.OrderedDict[Hashable, Tensor] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Tensor]:
        """The cached entries among ``keys`` (each counted as a hit or a miss), freshened in the LRU order."""
        found = {}
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None:
                    self._misses += 1
                    continue
                self._entries.move_to_end(key)
                found[key] = entry
                self._hits += 1
        return found

    def put_many(self, entries: dict[Hashable, Tensor]) -> None:
        with self._lock:
            for key, value in entries.items():
                self._entries[key] = value
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)

    def contains(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self._hits, "misses": self._misses, "size": len(self._entries), "max_size": self.max_size}

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._hits = 0
            self._misses = 0


def _real_lengths(tokens: Tensor) -> Tensor:
    """(S, L) BPE ids, padded with trailing zeros -> (S,) position of the last real token + 1.

    Not a count of non-zero ids: id 0 is also the token "!", which may occur inside a prompt.
    """
    positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
    return ((tokens != 0) * positions).amax(dim=1)


class TextEmbeddings:
    """The text half of :class:`pmp.clip.CLIPModel` (a mixin: it uses the model's ``model``,
    ``tokenizer``, ``config``, ``context_length``, ``device``, ``cache`` and ``_weights_version``)."""

    def count_tokens(self, text: str) -> int:
        """Tokens the text tower sees for ``text``, start and end tokens included."""
        return len(self.tokenizer.encode(text)) + 2

    def _text_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.open_clip.named_parameters() if not name.startswith("visual.")]

    def _weights_key(self) -> tuple:
        versions = sum(getattr(p, "_version", 0) for p in self._text_parameters())
        return (self._weights_version, versions, str(self.device), str(self.open_clip.logit_scale.dtype))

    def _can_truncate(self) -> bool:
        """True when running only the real tokens gives the same embedding as the padded forward.

        Needs a causal mask (later padding cannot influence earlier tokens) and pooling at a real token
        (EOT/first). CustomTextCLIP towers and non-causal ones run the full context instead.
        """
        m = self.open_clip
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
        m = self.open_clip
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

    def longest_prompt(self, label: str) -> int:
        """Tokens of the longest template filled with ``label``, start and end tokens included."""
        return max(self.count_tokens(t.replace("{}", label)) for t in self.config.templates)

    def _fits(self, phrase: str) -> bool:
        """Every template filled with ``phrase`` fits the text tower's context."""
        return self.longest_prompt(phrase) <= self.context_length

    def check_fits(self, labels: Sequence[str]) -> None:
        """Raise PromptError naming the first prompt whose filled templates do not fit the text tower.

        The one check of user prompts against the context length (the Segmenter and the demo call it).
        Labels the cache holds were encoded before, so they fit and are not tokenised again.
        """
        known = self.cached_labels(labels)
        for label in labels:
            if label in known:
                continue
            longest = self.longest_prompt(label)
            if longest > self.context_length:
                raise PromptError(
                    f"prompt {label!r} is too long for CLIP: {longest} tokens with its template, at most "
                    f"{self.context_length} fit; shorten it"
                )

    def phrases(self, label: str) -> list[str]:
        """What a label is encoded by: the label itself, or - when a filled template would not fit the text
        tower and the label is a comma-separated synonym list (ADE-847's "bus, autobus, coach, ...") - each
        synonym that fits, whose embeddings are averaged like the templates' are. Any other label that does
        not fit is left whole, and :meth:`check_fits` names it in its error."""
        if "," not in label or self._fits(label):
            return [label]
        synonyms = [word.strip() for word in label.split(",") if word.strip()]
        fitting = [word for word in synonyms if self._fits(word)]
        return fitting or [label]

    def _embed_labels(self, labels: Sequence[str]) -> Tensor:
        """(M,) labels -> (M, C) normalised embeddings averaged over templates (and synonyms, see
        :meth:`phrases`); one batched pass."""
        templates = self.config.templates
        phrases = [self.phrases(label) for label in labels]
        # open_clip's tokenizer silently truncates, and a cut-off prompt would be a different class
        self.check_fits([phrase for label_phrases in phrases for phrase in label_phrases])
        prompts, owner_index = [], []
        for index, label_phrases in enumerate(phrases):
            for phrase in label_phrases:
                for template in templates:
                    prompts.append(template.replace("{}", phrase))
                    owner_index.append(index)
        tokens = self.tokenizer(prompts)  # (P, context), P = sum over labels of phrases x templates
        # Sort by length so that each chunk is truncated to similar lengths; scatter back afterwards.
        order = torch.argsort(_real_lengths(tokens))
        embeds = []
        for start in range(0, len(prompts), TEXT_BATCH):
            chunk = order[start : start + TEXT_BATCH]
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
            return torch.zeros(0, self.embed_dim, device=self.device, dtype=self.open_clip.logit_scale.dtype)
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self._text_parameters())
        if needs_grad or self.cache.max_size == 0:
            return self._embed_labels(labels)

        weights_key = self._weights_key()
        key_of = {label: (weights_key, self.config.templates, label) for label in labels}
        found = self.cache.get_many([key_of[label] for label in dict.fromkeys(labels)])
        found = {key[2]: embed for key, embed in found.items()}
        missing = [label for label in dict.fromkeys(labels) if label not in found]
        if missing:
            with torch.no_grad():
                fresh = self._embed_labels(missing).detach()
            self.cache.put_many({key_of[label]: embed for label, embed in zip(missing, fresh)})
            found.update(zip(missing, fresh))
        # stack() makes a new tensor, so entries made under inference_mode come back as normal tensors
        # that autograd code (e.g. a decoder being trained) may use.
        return torch.stack([found[label].to(self.device) for label in labels])

    def cached_labels(self, labels: Sequence[str]) -> set[str]:
        """The labels whose embeddings the cache holds for the current weights and templates.

        Such a label was encoded before, so it is known to fit the context length: callers that check
        token limits up front (the Segmenter) skip re-tokenising it. Neither a hit nor a miss is counted.
        """
        weights_key = self._weights_key()
        return {label for label in labels if self.cache.contains((weights_key, self.config.templates, label))}

    def cache_info(self) -> dict[str, int]:
        """Hits and misses counted per distinct prompt of each encode_text call; current and max size."""
        return self.cache.info()

    def clear_cache(self) -> None:
        self.cache.clear()
