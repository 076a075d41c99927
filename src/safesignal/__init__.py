"""safesignal: explicit safety signals for causal LMs (Li & Kim, ICML 2025, arXiv 2505.17072)."""

from .model import SafeSignalConfig, SafetyModel

__all__ = ["SafetyModel", "SafeSignalConfig"]
__version__ = "0.1.0"
