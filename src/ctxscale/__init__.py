"""context-scaling: fit, validate and apply the context-aware scaling law of Montgomery et al. (2025)."""

__version__ = "0.1.0"
