"""Training models from other models: GPT4Image-style alignment with a frozen text encoder."""

from .align import LOSSES, Projector, text_alignment_loss

__all__ = ["LOSSES", "Projector", "text_alignment_loss"]
