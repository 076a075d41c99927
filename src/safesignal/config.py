"""Load a config dataclass from YAML plus `--key value` command-line overrides.

Relative data paths in a YAML file (`*_file` keys) resolve against the YAML file's directory,
so recipes run from any working directory.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from transformers import HfArgumentParser


def _to_argv(mapping: dict) -> list[str]:
    argv = []
    for key, value in mapping.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        else:
            argv.append(str(value))
    return argv


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of field: value")
    for key, value in list(data.items()):
        if key.endswith("_file") and isinstance(value, str) and not Path(value).is_absolute():
            candidate = path.parent / value
            data[key] = str(candidate) if candidate.exists() else value
    return data


def load_config(cls, yaml_path: str | Path | None = None, overrides: list[str] | None = None):
    """Instantiate dataclass `cls` from a YAML file, then apply `--key value` overrides."""
    data = read_yaml(yaml_path) if yaml_path else {}
    known = {f.name for f in cls.__dataclass_fields__.values()}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{yaml_path}: unknown field(s) {unknown} for {cls.__name__}")
    parser = HfArgumentParser(cls)
    (config,) = parser.parse_args_into_dataclasses(args=_to_argv(data) + list(overrides or []))
    return config
