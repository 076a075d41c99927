"""Pickle-free serialisation of optimiser, scheduler and RNG state.

Nested state (dicts, lists, numbers, tensors, numpy arrays) is split into a JSON skeleton and
a safetensors file of the tensors, so resuming training never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .io import atomic_write_text

_TENSOR, _ARRAY, _TUPLE = "__tensor__", "__ndarray__", "__tuple__"


def _split(obj, tensors: dict, prefix: str):
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {_ARRAY: key}
    if isinstance(obj, dict):
        # JSON keys are strings; keep the original key type (optimiser state uses ints).
        return {"__dict__": [[_split(k, tensors, prefix), _split(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [_split(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [_split(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot serialise {type(obj).__name__} without pickle")


def _join(obj, tensors: dict):
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _ARRAY in obj:
            return tensors[obj[_ARRAY]].numpy()
        if _TUPLE in obj:
            return tuple(_join(v, tensors) for v in obj[_TUPLE])
        if "__dict__" in obj:
            return {_join(k, tensors): _join(v, tensors) for k, v in obj["__dict__"]}
        raise ValueError(f"unexpected object in state skeleton: {sorted(obj)}")
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_state(state, directory: Path, name: str) -> None:
    """Write `state` as `<name>.json` + `<name>.safetensors` in `directory`."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, tensors, name)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    atomic_write_text(directory / f"{name}.json", json.dumps(skeleton))


def load_state(directory: Path, name: str):
    skeleton_path = directory / f"{name}.json"
    if not skeleton_path.is_file():
        raise FileNotFoundError(f"{skeleton_path}: missing from the training checkpoint")
    tensors = load_file(str(directory / f"{name}.safetensors"))
    return _join(json.loads(skeleton_path.read_text()), tensors)


def has_state(directory: Path, name: str) -> bool:
    return (directory / f"{name}.json").is_file()
