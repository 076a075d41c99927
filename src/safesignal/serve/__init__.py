"""An OpenAI-compatible server over strategic decoding, with continuous batching (DESIGN.md §Layout)."""

from .config import ServeConfig
from .server import build_app, load_serve_config, serve

__all__ = ["ServeConfig", "build_app", "load_serve_config", "serve"]
