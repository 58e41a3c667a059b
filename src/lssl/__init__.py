"""lssl: linear state-space sequence models (LSSL, S4, S4D, Liquid-S4) in PyTorch.

Layers take and return (B, L, H); see `lssl.layer` for the three views of one layer and
`lssl.model` for deep models.
"""

from . import discretize, hippo
from .layer import LAYERS, LSSL, S4, S4D, LiquidS4, LiquidState, SSMLayer
from .model import SequenceModel

__version__ = "0.1.0"
__all__ = [
    "LAYERS", "LSSL", "S4", "S4D", "LiquidS4", "LiquidState", "SSMLayer", "SequenceModel", "discretize", "export",
    "hippo", "load",
]


def load(path: str) -> SequenceModel:
    """Rebuild a trained `SequenceModel` from a checkpoint file alone (see `lssl.train`)."""
    from .train.checkpoint import load_model

    return load_model(path)


def export(model: SequenceModel | str, path: str, rate: float = 1.0, mode: str = "step", length: int | None = None) -> str:
    """Write a model's (or a checkpoint's) streaming step (mode 'step') or its forward on
    sequences of `length` (mode 'forward') as ONNX to `path`, with a JSON sidecar naming its
    inputs, outputs and state shapes (`lssl.deploy.export`; needs `pip install 'lssl[onnx]'`).
    Returns the ONNX path."""
    from .deploy import export as export_onnx

    if isinstance(model, str):
        model = load(model)
    return str(export_onnx(model, path, rate, mode=mode, length=length))
