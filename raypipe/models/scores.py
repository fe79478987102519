"""A model's outputs as scores, decided in one place and importable without scikit-learn (the served
model's environment imports this module: it pins only what inference needs)."""

from __future__ import annotations

import numpy as np


def scores_from_logits(logits, n_classes: int) -> np.ndarray:
    """A model's logits (a torch tensor) -> scores: P(positive) per image for a binary model (one logit,
    sigmoid), a row of class probabilities otherwise (softmax). The one place this is decided."""
    import torch

    logits = logits.detach().float().cpu()
    return (torch.sigmoid(logits.reshape(-1)) if n_classes == 2 else torch.softmax(logits, dim=1)).numpy()
