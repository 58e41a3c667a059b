"""lssl: linear state-space sequence models (LSSL, S4, S4D, Liquid-S4) in PyTorch.

Layers take and return (B, L, H); see `lssl.layer` for the three views of one layer and
`lssl.model` for deep models.
"""

from . import discretize, hippo
from .layer import LAYERS, LSSL, S4, S4D, LiquidS4, LiquidState, SSMLayer
from .model import SequenceModel

__version__ = "0.1.0"
__all__ = [
    "LAYERS", "LSSL", "S4", "S4D", "LiquidS4", "LiquidState", "SSMLayer", "SequenceModel", "discretize", "hippo", "load",
]


def load(path: str) -> SequenceModel:
    """Rebuild a trained `SequenceModel` from a checkpoint file alone (see `lssl.train`)."""
    from .train.checkpoint import load_model

    return load_model(path)
