"""Stage 1: the prompt-guided mask-proposal model (backbone, pixel decoder, transformer decoder, heads).

The text modes (PMP's Eq. 5 and the Fig. 5 ablations) live in :mod:`pmp.modeling.text_conditioning`.
"""

from pmp.modeling.backbone import build_backbone
from pmp.modeling.heads import MaskHead, OpenVocabClassHead
from pmp.modeling.pixel_decoder import build_pixel_decoder
from pmp.modeling.proposal_model import MaskProposalModel, build_mask_proposal_model
from pmp.modeling.text_conditioning import TextConditioning, TextCrossAttention
from pmp.modeling.transformer_decoder import build_transformer_decoder

__all__ = [
    "MaskHead",
    "MaskProposalModel",
    "OpenVocabClassHead",
    "TextConditioning",
    "TextCrossAttention",
    "build_backbone",
    "build_mask_proposal_model",
    "build_pixel_decoder",
    "build_transformer_decoder",
]
