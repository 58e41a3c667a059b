"""Training and evaluation: `fit(config)`, `evaluate(checkpoint)`, and `load_model(path)`
(also `lssl.load`) to rebuild a trained model from its checkpoint alone."""

from .checkpoint import load_model
from .loop import Diverged, Interrupted, evaluate, fit

__all__ = ["Diverged", "Interrupted", "evaluate", "fit", "load_model"]
