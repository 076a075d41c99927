"""`DataPrepareConfig`: which of the user's files fill each role of a training-data recipe.

A recipe is YAML (configs/paper/data.yaml is the paper's, shared/METHOD.md §3.2):

    out_dir: $SAFESIGNAL_HOME/data/paper
    malicious:                       # label 1: prompts answered with a refusal
      max_records: 14763
      sources:
        - {data_file: alert_sft_chosen.jsonl, style: alert}
    benign:                          # label 0: instruction data with its answers
      max_records: 14763             # the listed sources fill it in order
      sources:
        - {data_file: lima/train.jsonl, style: lima}
        - {data_file: alpaca_data.json, style: alpaca, require_empty: [input]}
    evaluation:                      # prompts no training record may (nearly) copy
      - {data_file: hex_phi.csv, style: columns, columns: {prompt: text}}

`data_file` paths resolve like every `*_file` key (config.read_yaml): `$SAFESIGNAL_HOME/...`,
or relative to the YAML file's folder when the file is there. Top-level scalar fields take
`--key value` overrides from the command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import read_yaml
from ..home import safesignal_home
from .row_styles import STYLES
from .user_files import FORMATS

SELECT = ("in_order", "random")


@dataclass
class SourceFile:
    data_file: str
    style: str = "records"  # alert | lima | alpaca | columns | records (data/row_styles.py)
    format: str = "auto"  # auto | jsonl | json | csv | parquet | hf (a save_to_disk directory)
    split: str | None = None  # the split of a saved HF DatasetDict
    columns: dict[str, str] = field(default_factory=dict)  # our field -> the file's column
    name: str | None = None  # the `source` its records carry; default: the file's name without suffix
    refusals: str = "keep"  # keep the file's responses, or `always` write our own refusals (malicious only)
    require_empty: list[str] = field(default_factory=list)  # rows with any of these columns filled are skipped

    @property
    def source_name(self) -> str:
        return self.name or Path(self.data_file.rstrip("/")).stem


@dataclass
class Role:
    sources: list[SourceFile] = field(default_factory=list)
    # At most this many records after deduplication (None: all). `in_order` fills from the
    # sources as listed, each in file order (the paper: LIMA, then Alpaca up to the count);
    # `random` draws a seeded sample from all of them.
    max_records: int | None = None
    select: str = "in_order"


@dataclass
class DataPrepareConfig:
    out_dir: str | None = None  # default: SAFESIGNAL_HOME/data/paper
    malicious: Role = field(default_factory=Role)
    benign: Role = field(default_factory=Role)
    evaluation: list[SourceFile] = field(default_factory=list)
    # Also keep out every prompt the suite itself evaluates on (`build.suite_evaluation_index`;
    # needs the data packages of requirements-data.txt).
    reserve_suite_evaluation: bool = True
    seed: int = 0
    validation_fraction: float = 0.15  # per label, as `data build` splits
    # raise: stop with every malformed row listed; skip: leave them out, each listed with its
    # problem in rejected.jsonl and counted in summary.json.
    on_error: str = "raise"
    # Near-duplicate search (data/minhash.py): bands x rows MinHash permutations.
    lsh_bands: int = 32
    lsh_rows: int = 3
    lsh_bucket_window: int = 64

    def resolved_out_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else safesignal_home() / "data" / "paper"

    def roles(self) -> dict[str, Role]:
        """The training roles in the order their rows are decided (a benign prompt that copies
        a malicious one is the one dropped, as in `data build`)."""
        return {"malicious": self.malicious, "benign": self.benign}

    def validate(self, where: str = "config") -> None:
        if not any(role.sources for role in self.roles().values()):
            raise ValueError(f"{where}: no training files: list some under malicious.sources or benign.sources")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"{where}: validation_fraction: expected a fraction in [0, 1), got {self.validation_fraction}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"{where}: on_error: expected raise or skip, got {self.on_error!r}")
        if self.lsh_bucket_window < 1:
            raise ValueError(f"{where}: lsh_bucket_window: expected at least 1, got {self.lsh_bucket_window}")
        for role_name, role in self.roles().items():
            if role.select not in SELECT:
                raise ValueError(f"{where}: {role_name}.select: expected one of {', '.join(SELECT)}, got {role.select!r}")
            if role.max_records is not None and role.max_records < 1:
                raise ValueError(f"{where}: {role_name}.max_records: expected a positive count, got {role.max_records}")
        names = [s.source_name for role in self.roles().values() for s in role.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{where}: two training files are both named {repeated[0]!r} (their records' `source`): "
                             "give one a name: field")
        named = [(f"{r}.sources[{k}]", s) for r, role in self.roles().items() for k, s in enumerate(role.sources)]
        named += [(f"evaluation[{k}]", s) for k, s in enumerate(self.evaluation)]
        for at, source in named:
            if source.style not in STYLES:
                raise ValueError(f"{where}: {at}.style: {source.style!r} is not one of {', '.join(STYLES)}")
            if source.format != "auto" and source.format not in FORMATS:
                raise ValueError(f"{where}: {at}.format: {source.format!r} is not one of auto, {', '.join(FORMATS)}")


def _build(cls, data, where: str, at: str = ""):
    """`cls` from a YAML mapping, recursively; an unknown or mistyped key is named by its
    file (`where`) and its place in it (`at`, e.g. benign.sources[1])."""
    place = f"{where}: {at}: " if at else f"{where}: "
    if not isinstance(data, dict):
        raise ValueError(f"{place}expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{place}unknown field {unknown[0]!r} (fields: {', '.join(fields)})")
    values = {}
    for name, value in data.items():
        inner = f"{at}.{name}" if at else name
        if fields[name].type == "Role":
            value = _build(Role, value, where, inner)
        elif fields[name].type == "list[SourceFile]":
            if not isinstance(value, list):
                raise ValueError(f"{where}: {inner}: expected a list of files, got {type(value).__name__}")
            value = [_build(SourceFile, item, where, f"{inner}[{k}]") for k, item in enumerate(value)]
        values[name] = value
    try:
        return cls(**values)
    except TypeError as err:  # a required field missing (data_file)
        raise ValueError(f"{place}{err}") from None


def load_prepare_config(path: str | Path | None, overrides: list[str] | None = None) -> DataPrepareConfig:
    """The recipe in `path`, then `--key value` overrides of its top-level scalar fields."""
    data = read_yaml(path) if path else {}
    overrides = list(overrides or [])
    if len(overrides) % 2:
        raise ValueError(f"overrides: expected --key value pairs, got {overrides}")
    scalars = {f.name for f in dataclasses.fields(DataPrepareConfig)} - {"malicious", "benign", "evaluation"}
    for flag, text in zip(overrides[::2], overrides[1::2]):
        key = flag.removeprefix("--")
        if not flag.startswith("--") or key not in scalars:
            raise ValueError(f"{flag}: not an override of DataPrepareConfig (fields: {', '.join(sorted(scalars))}); "
                             "roles and files are set in the YAML file")
        data[key] = yaml.safe_load(text)
    config = _build(DataPrepareConfig, data, str(path or "config"))
    config.validate(str(path or "config"))
    return config
