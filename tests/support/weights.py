"""Checkpoint files to test with."""

from __future__ import annotations

import io


def state_dict_bytes(seed: int) -> bytes:
    """A random generator's state dict as `torch.save` writes it (about 8.6 MB)."""
    import torch

    from serve_app.model.generator import random_generator

    buffer = io.BytesIO()
    torch.save(random_generator(seed).state_dict(), buffer)
    return buffer.getvalue()
