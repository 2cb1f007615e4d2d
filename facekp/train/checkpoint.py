"""Reading a run's checkpoints (``last.pt``, ``best.pt``) without trusting them."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The dict of tensors and plain values saved by :class:`facekp.train.fit.Trainer`.

    ``torch.load(weights_only=True)`` restores only tensors and plain Python values: a file that
    asks to run code (a pickle of arbitrary objects) is refused, never executed. A truncated,
    garbage or foreign file raises ``ValueError`` naming it.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(f"{path} is not a readable facekp-train checkpoint (truncated, corrupt or foreign: {reason})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a facekp-train checkpoint")
    return state
