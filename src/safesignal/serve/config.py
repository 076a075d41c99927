"""ServeConfig: every setting of `safesignal serve`, as a dataclass + YAML (configs/serve.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..decoding.policy import SCHEDULES
from ..registry import DEFAULT_MODEL

LOOPBACK = "127.0.0.1"


@dataclass
class ServeConfig:
    """Where the server listens, what it accepts, how hard it may be pushed.

    Limits are checked before a request reaches the model: a request over any of them gets a
    4xx naming the field and the server goes on serving. Per-request safety overrides
    (`safety` in the request body) are accepted only inside the bounds set here.
    """

    model: str = DEFAULT_MODEL  # checkpoint directory or shipped model name
    served_model_name: str | None = None  # the id clients send as `model` (default: `model`)
    host: str = LOOPBACK  # loopback unless told otherwise
    port: int = 8000
    api_key: str | None = None  # also SAFESIGNAL_API_KEY; clients send `Authorization: Bearer KEY`
    # ---- limits
    max_body_bytes: int = 1_000_000
    max_messages: int = 64
    max_prompt_tokens: int = 2048  # the rendered conversation, template tokens included
    max_tokens_limit: int = 1024  # the largest `max_tokens` a request may ask for
    default_max_tokens: int = 256
    max_stop_sequences: int = 4
    # ---- sampling defaults (OpenAI's: temperature 1 samples)
    default_temperature: float = 1.0
    default_top_p: float = 1.0
    # ---- load
    max_batch_rows: int = 16  # rows decoding together in one forward
    max_queued: int = 64  # requests waiting for a row; one more gets 429
    prefill_token_budget: int = 256  # prompt tokens one join (one prefill forward between decode steps) may take
    retry_after_s: int = 1  # the Retry-After a 429 carries
    # ---- safety policy: the model's calibrated policy, then these fields, then a request's overrides
    policy: dict = field(default_factory=dict)
    threshold_bounds: tuple[float, float] = (0.05, 0.95)
    tau_bounds: tuple[int, int] = (1, 8)
    allowed_schedules: tuple[str, ...] = SCHEDULES
    # ---- logs
    log_prompts: bool = False  # access logs never carry prompt text unless this is on
    log_level: str = "info"

    def __post_init__(self):
        for name in ("max_body_bytes", "max_messages", "max_prompt_tokens", "max_tokens_limit",
                     "default_max_tokens", "max_batch_rows", "max_queued", "prefill_token_budget",
                     "max_stop_sequences"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be ≥ 1, got {getattr(self, name)}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"default_max_tokens: {self.default_max_tokens} is over max_tokens_limit "
                             f"{self.max_tokens_limit}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port: {self.port} is not a TCP port")
        self.threshold_bounds = tuple(float(x) for x in self.threshold_bounds)
        self.tau_bounds = tuple(int(x) for x in self.tau_bounds)
        self.allowed_schedules = tuple(self.allowed_schedules)
        low, high = self.threshold_bounds
        if not 0 < low <= high < 1:
            raise ValueError(f"threshold_bounds: need 0 < low ≤ high < 1, got {self.threshold_bounds}")
        if not 1 <= self.tau_bounds[0] <= self.tau_bounds[1]:
            raise ValueError(f"tau_bounds: need 1 ≤ low ≤ high, got {self.tau_bounds}")
        unknown = sorted(set(self.allowed_schedules) - set(SCHEDULES))
        if unknown or not self.allowed_schedules:
            raise ValueError(f"allowed_schedules: {unknown or 'empty'}; choose from {SCHEDULES}")
        if not isinstance(self.policy, dict):
            raise ValueError("policy: expected a mapping of SafetyPolicy fields")

    @property
    def model_id(self) -> str:
        return self.served_model_name or self.model
