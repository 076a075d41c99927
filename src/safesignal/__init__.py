"""safesignal: explicit safety signals for causal LMs (Li & Kim, ICML 2025, arXiv 2505.17072)."""

# Imported on first use, so `import safesignal.data...` does not pull in the model or decoding.
_PUBLIC = {"SafetyModel": ".model", "SafeSignalConfig": ".checkpoint", "SafetyPolicy": ".decoding.policy"}

__all__ = ["SafetyModel", "SafeSignalConfig", "SafetyPolicy"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _PUBLIC:
        from importlib import import_module

        return getattr(import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module 'safesignal' has no attribute {name!r}")
