"""lssl: linear state-space sequence models."""
__version__ = "0.1.0"
