"""`safesignal serve`: load the model, build the scheduler and app, run uvicorn."""

from __future__ import annotations

import logging
import os
import sys

from ..config import check_fields, read_yaml
from ..cpu_tuning import tune_glibc_malloc
from ..decoding import SafetyPolicy
from .config import LOOPBACK, ServeConfig

API_KEY_ENV = "SAFESIGNAL_API_KEY"


def load_serve_config(path: str | None = None, **overrides) -> ServeConfig:
    """ServeConfig from defaults, then a YAML file, then the given fields (None: not given);
    the API key falls back to SAFESIGNAL_API_KEY."""
    data = read_yaml(path) if path else {}
    check_fields(ServeConfig, data, path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if not data.get("api_key") and os.environ.get(API_KEY_ENV):
        data["api_key"] = os.environ[API_KEY_ENV]
    return ServeConfig(**data)


def base_policy_fields(model, config: ServeConfig) -> dict:
    """The policy every request starts from: the model's calibrated values, then the config's
    `policy`; checked once here so a bad config fails before the server starts."""
    fields = {**model.config.calibration, **config.policy, "max_prompt_tokens": config.max_prompt_tokens}
    SafetyPolicy(**fields)
    return fields


def build_app(model, config: ServeConfig):
    from .app import create_app
    from .scheduler import Scheduler

    longest_token = max(map(len, model.tokenizer.get_vocab()))
    return create_app(Scheduler(model, config), config, base_policy_fields(model, config), longest_token)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("safesignal.serve", "safesignal.serve.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name == "safesignal.serve" else []
        logger.setLevel(level.upper())


def serve(config: ServeConfig) -> None:
    import uvicorn

    from ..model import SafetyModel

    configure_logging(config.log_level)
    tune_glibc_malloc()  # the KV cache grows by a concatenation per step: keep freed buffers for reuse
    if config.host != LOOPBACK and not config.api_key:
        print(f"safesignal serve: warning: listening on {config.host} without an API key "
              f"(--api-key or {API_KEY_ENV})", file=sys.stderr)
    model = SafetyModel.from_pretrained(config.model).merge_lora().eval()  # inference only: fold LoRA in
    if model.config.objective != "cls":
        raise ValueError(f"--model {config.model}: strategic decoding needs a [CLS]-trained model "
                         "(this one is a plain-SFT baseline)")
    app = build_app(model, config)
    print(f"safesignal serve: {config.model_id} on http://{config.host}:{config.port}/v1 "
          f"(up to {config.max_batch_rows} rows per step, {config.max_queued} waiting)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, access_log=False)
