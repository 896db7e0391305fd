"""PMP: prompt-guided mask proposals for two-stage open-vocabulary segmentation (arXiv 2412.10292).

from pmp import Segmenter
seg = Segmenter.from_pretrained()            # bundled PMP model; or a folder, or a Hub repo id
out = seg("photo.jpg", "sky, house, red car")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pmp.config import SegmenterConfig

__version__ = "0.1.0"
__all__ = ["Segmenter", "SegmentationResult", "SegmenterConfig", "__version__"]

if TYPE_CHECKING:
    from pmp.segmenter import SegmentationResult, Segmenter


def __getattr__(name: str) -> Any:
    # Importing torch, open_clip and spaCy takes seconds; `import pmp.config` should not pay for it.
    if name in ("Segmenter", "SegmentationResult"):
        from pmp import segmenter  # here: torch, open_clip and spaCy load only when a model is asked for

        return getattr(segmenter, name)
    raise AttributeError(f"module 'pmp' has no attribute {name!r}")
