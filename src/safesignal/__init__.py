"""safesignal: explicit safety signals for causal LMs (Li & Kim, ICML 2025, arXiv 2505.17072)."""

from .model import SafeSignalConfig, SafetyModel
from .decoding.policy import SafetyPolicy

__all__ = ["SafetyModel", "SafeSignalConfig", "SafetyPolicy"]
__version__ = "0.1.0"
