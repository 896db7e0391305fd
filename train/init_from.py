"""Start a PMP run from a trained baseline: the paper's text conditioning as a lightweight adaptor.

PMP's decoder is the baseline's decoder plus text cross-attention layers (Eq. 5; the Fig. 5 modes add
their own). So a trained baseline of the same recipe gives every other weight: ``--init-from FOLDER``
loads them and leaves only the text layers (``decoder.text.*``) at their fresh initialisation. What it
saves is the baseline's stage-1 training, when the baseline is trained anyway; what it costs is that
PMP's stage 1 no longer learns from scratch with the text in place, so a run from a baseline is its own
experiment (the paper's Table 1 trains each model with its host's full schedule).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pmp.checkpoint import CheckpointError
from pmp.segmenter import Segmenter

TEXT_LAYERS = "decoder.text."  # the only weights a baseline does not have


def load_baseline_weights(model: torch.nn.Module, folder: str | Path) -> list[str]:
    """Copy a trained baseline's stage-1 weights (``folder``, a segmenter checkpoint) into ``model`` (a
    proposal model); returns the names left at their initialisation (the text layers). ValueError when the
    two differ anywhere else (another backbone, width, number of queries...)."""
    try:
        baseline = Segmenter.from_pretrained(folder).proposal_model.state_dict()
    except CheckpointError as error:
        raise ValueError(f"--init-from {folder}: {error}") from None
    own = model.state_dict()
    unexpected = sorted(set(baseline) - set(own))
    missing = sorted(key for key in set(own) - set(baseline) if not key.startswith(TEXT_LAYERS))
    mismatched = sorted(key for key in set(own) & set(baseline) if own[key].shape != baseline[key].shape)
    if unexpected or missing or mismatched:
        raise ValueError(
            f"--init-from {folder}: not a baseline of this recipe's model; {len(missing)} weights missing (e.g. "
            f"{missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(mismatched)} of another "
            f"shape (e.g. {mismatched[:3]})"
        )
    model.load_state_dict(baseline, strict=False)
    return sorted(set(own) - set(baseline))
