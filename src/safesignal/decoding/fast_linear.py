"""Matmul paths for the few-row linears of a decode step, chosen by measurement.

A decode step feeds 1-2 rows per conversation, and on CPU the BLAS kernel `F.linear` reaches
for at a few rows can be several times slower than the same product computed weight-first:
with SmolLM2's tied LM head (49,152 x 576, fp32, 2 threads) one row took ~10 ms through
`F.linear` while two rows took ~3.5 ms as `W @ X.T`. Which path wins depends on the shape,
dtype, row count, BLAS build and thread count, so nothing here is assumed: each
(device, dtype, out, in, rows) is timed once per process, the first time a decoder meets it,
and the fastest path is used from then on (DESIGN.md §Performance rules). All paths compute
the same product; only the summation order may differ (float rounding).

A step's batch also carries dead fillers: when one row checks, every other row gets a dead
`[CLS]` column, and a row fed fewer tokens than the widest is padded. Nobody reads a dead
slot, so within `live_rows` the linears compute the live rows only and give the dead ones
zeros (a zero query, key and value: finite, and masked out for every reader). At batch 8
with one row checking that is 9 rows of work instead of 16.

Only plain `nn.Linear` modules on CPU take part: elsewhere the wall clock would time kernel
launches, not kernels, and GPU libraries pick their own kernels for small shapes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class FastLinearConfig:
    enabled: bool = True  # False: every linear runs as the model has it (both levers off)
    skip_dead_rows: bool = True
    max_rows: int = 8  # row counts above this always take F.linear (measured: it wins there)
    repeats: int = 3  # timed calls per path and row count (the minimum counts)

    def __post_init__(self):
        if self.max_rows < 1 or self.repeats < 1:
            raise ValueError(f"max_rows and repeats: must be ≥ 1, got {self.max_rows}, {self.repeats}")


def _weight_first(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (weight @ x.T).T


def _weight_first_paired(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # one row makes BLAS run a matrix-vector product; a duplicated row makes it matrix-matrix
    return (weight @ torch.cat([x, x]).T)[:, :1].T


# (rows 2-D, weight) -> rows x out, no bias
PATHS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "linear": F.linear,
    "weight_first": _weight_first,
    "weight_first_paired": _weight_first_paired,
}


def candidates(rows: int) -> list[str]:
    return [name for name in PATHS if rows == 1 or name != "weight_first_paired"]


def wall_time(path: str, call: Callable[[], torch.Tensor], repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls, after one warm-up call."""
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


# (device type, dtype, out, in, rows) -> path: measured once per process
_CHOSEN: dict[tuple, str] = {}


def choose_path(weight: torch.Tensor, rows: int, repeats: int, timer=None) -> str:
    """The fastest path for `rows` rows through `weight`, measured on the first call for its
    shape and dtype. `timer(path, call, repeats)` -> seconds (default `wall_time`; tests inject one)."""
    timer = timer or wall_time
    key = (weight.device.type, weight.dtype, *weight.shape, rows)
    if key not in _CHOSEN:
        with torch.inference_mode():
            x = torch.randn(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
            times = {name: timer(name, lambda f=PATHS[name]: f(x, weight), repeats) for name in candidates(rows)}
        _CHOSEN[key] = min(times, key=times.get)
    return _CHOSEN[key]


class FastLinear:
    """The chosen paths for one model's linears; `applied()` routes their few-row calls there,
    and `live_rows` keeps a step's dead fillers out of them."""

    def __init__(self, model: nn.Module, config: FastLinearConfig = FastLinearConfig(), timer=None):
        self.forwards: list[tuple[nn.Module, Callable]] = []
        self.live: tuple[tuple[int, ...], torch.Tensor] | None = None  # (B, W) shape, flat live indices
        self.skip_dead_rows = config.enabled and config.skip_dead_rows
        if not config.enabled:
            return
        for module in model.modules():
            if type(module) is not nn.Linear or module.weight.device.type != "cpu":
                continue
            paths = [None] + [choose_path(module.weight, r, config.repeats, timer) for r in range(1, config.max_rows + 1)]
            if self.skip_dead_rows or any(p not in (None, "linear") for p in paths):
                self.forwards.append((module, _routed_forward(module, paths, self)))

    @contextmanager
    def applied(self):
        """Within: the measured paths serve those linears (an instance-level `forward`, as
        accelerate's hooks also set one; whatever was there before is put back)."""
        before = [module.__dict__.get("forward") for module, _ in self.forwards]
        for module, forward in self.forwards:
            module.__dict__["forward"] = forward
        try:
            yield
        finally:
            for (module, _), previous in zip(self.forwards, before):
                if previous is None:
                    del module.__dict__["forward"]
                else:
                    module.__dict__["forward"] = previous

    @contextmanager
    def live_rows(self, live: torch.Tensor):
        """Within (and within `applied`): a linear fed a (B, W, in) input computes only the rows
        where `live` (B, W) is True; the others come out as zeros."""
        if not self.skip_dead_rows or bool(live.all()):
            yield
            return
        self.live = (tuple(live.shape), live.reshape(-1).nonzero().squeeze(1))
        try:
            yield
        finally:
            self.live = None


def _routed_forward(module: nn.Linear, paths: list[str | None], owner: FastLinear) -> Callable:
    original = module.forward  # the forward in place now (the class's, or a hook's)
    largest = len(paths) - 1

    def product(x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if not 1 <= rows <= largest or paths[rows] == "linear":
            return original(x)
        out = PATHS[paths[rows]](x.reshape(rows, x.shape[-1]), module.weight)
        if module.bias is not None:
            out = out + module.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def forward(x: torch.Tensor) -> torch.Tensor:
        live = owner.live
        if live is None or tuple(x.shape[:-1]) != live[0]:
            return product(x)
        shape, index = live
        flat = x.reshape(-1, x.shape[-1])
        got = product(flat.index_select(0, index))
        out = got.new_zeros(flat.shape[0], got.shape[-1])
        out[index] = got
        return out.reshape(*shape, got.shape[-1])

    return forward
