"""Strategic decoding (DESIGN.md §Decoding): policy, per-row state machine, cache slots,
sampling, streaming release, and the loop that ties them (`engine`)."""

from .engine import GenerationResult, Request, RowOutput, StrategicDecoder
from .fsm import SafetyEvent
from .policy import SafetyPolicy
from .sampler import Sampling
from .stream import StreamChunk, StreamDelta

__all__ = ["GenerationResult", "Request", "RowOutput", "SafetyEvent", "SafetyPolicy", "Sampling", "StrategicDecoder",
           "StreamChunk", "StreamDelta"]
