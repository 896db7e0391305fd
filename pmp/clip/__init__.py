"""The CLIP of both stages: :class:`CLIPModel` (:mod:`.model`), built by :mod:`.loading`, with prompt
embeddings in :mod:`.text` and per-pixel image embeddings in :mod:`.dense`."""

from pmp.clip.loading import load_open_clip, read_weights_file, resolve_pretrained_tag
from pmp.clip.model import CLIPModel

__all__ = ["CLIPModel", "load_open_clip", "read_weights_file", "resolve_pretrained_tag"]
