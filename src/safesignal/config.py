"""Load a config dataclass from YAML plus `--key value` command-line overrides.

Relative data paths in a YAML file (`*_file` keys) resolve against the YAML file's directory,
so recipes run from any working directory.
"""

from __future__ import annotations

from pathlib import Path

import yaml


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


HOME_PREFIX = "$SAFESIGNAL_HOME/"
DEFAULTS_KEY = "defaults"


def _resolve_path(path: Path, key: str, value):
    """`$SAFESIGNAL_HOME/...` anywhere, nested lists and mappings included (an eval grid's
    `models: [{path: $SAFESIGNAL_HOME/models/x}]`); `*_file` values relative to the YAML
    file's folder."""
    if isinstance(value, list):
        return [_resolve_path(path, key, item) for item in value]
    if isinstance(value, dict):
        return {k: _resolve_path(path, k, v) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    if value.startswith(HOME_PREFIX):
        from .home import safesignal_home

        return str(safesignal_home() / value[len(HOME_PREFIX):])
    if key.endswith("_file") and not Path(value).is_absolute():
        candidate = path.parent / value
        return str(candidate) if candidate.exists() else value
    return value


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A YAML mapping; `defaults: other.yaml` (relative to this file) is read first and
    overridden key by key, so recipes that differ in a few fields share one base file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    if path.resolve() in _seen:
        raise ValueError(f"{path}: {DEFAULTS_KEY}: circular reference")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of field: value")
    data = {key: _resolve_path(path, key, value) for key, value in data.items()}
    base = data.pop(DEFAULTS_KEY, None)
    if base is not None:
        if not isinstance(base, str):
            raise ValueError(f"{path}: {DEFAULTS_KEY}: expected the path of another YAML file")
        data = {**read_yaml(path.parent / base, (*_seen, path.resolve())), **data}
    return data


def check_fields(cls, data: dict, where) -> None:
    """Refuse keys of `data` that are not fields of dataclass `cls`, naming `where` they came from."""
    unknown = sorted(set(data) - set(cls.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for {cls.__name__}")


def load_config(cls, yaml_path: str | Path | None = None, overrides: list[str] | None = None,
                defaults: dict | None = None):
    """Instantiate dataclass `cls` from `defaults` (field values under the class's own), then a
    YAML file, then `--key value` overrides."""
    data = {**(defaults or {}), **(read_yaml(yaml_path) if yaml_path else {})}
    check_fields(cls, data, yaml_path)
    from transformers import HfArgumentParser  # here: reading a data recipe should not import transformers

    parser = HfArgumentParser(cls)
    (config,) = parser.parse_args_into_dataclasses(args=_to_argv(data) + list(overrides or []))
    return config
