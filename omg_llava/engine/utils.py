"""Small helpers shared by the engine pieces."""
from __future__ import annotations

from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / mmengine / DeepSpeed wrappers (each exposes it as ``.module``;
    mmengine's ``MMDeepSpeedEngineWrapper`` forwards ``.module`` to its DeepSpeed engine)."""
    while hasattr(model, 'module') and isinstance(getattr(model, 'module'), nn.Module):
        model = model.module
    return model
