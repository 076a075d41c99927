"""What a training run may write and remove in its `output_dir`.

A run directory is recognised by a marker file that `train()` writes before training starts;
a non-empty directory without it is refused, so a mistyped `output_dir` never receives (or
loses) anything. Inside it, only `checkpoint-N` directories this trainer wrote (they hold the
trainer state and a safesignal checkpoint) are ever replaced or rotated away.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..io import atomic_write_json, claim_directory, refuse_unless_ours
from ..checkpoint import CHECKPOINT_CONFIG

RUN_MARKER = "safesignal_run.json"
RUN_FORMAT = "safesignal-training-run"
TRAINER_STATE_NAME = "trainer_state.json"
WHAT = "training run directory"
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def is_run_directory(path: Path) -> bool:
    return (path / RUN_MARKER).is_file()


def check_run_directory(output_dir: str | Path) -> None:
    """Raise (naming it) unless `output_dir` is missing, empty or a safesignal run. Read-only."""
    refuse_unless_ours(output_dir, is_run_directory, WHAT)


def mark_run_directory(output_dir: str | Path) -> None:
    """Create `output_dir` if needed and mark it as a safesignal run (after `check_run_directory`)."""
    path = claim_directory(output_dir, is_run_directory, WHAT)
    if not is_run_directory(path):
        atomic_write_json(path / RUN_MARKER, {"format": RUN_FORMAT, "version": 1})


def is_training_checkpoint(path: Path) -> bool:
    return (
        _CHECKPOINT_NAME.fullmatch(path.name) is not None
        and (path / TRAINER_STATE_NAME).is_file()
        and (path / CHECKPOINT_CONFIG).is_file()
    )


def training_checkpoints(run_dir: Path) -> list[Path]:
    """The `checkpoint-N` directories this trainer wrote in `run_dir`, oldest step first."""
    found = [p for p in run_dir.iterdir() if p.is_dir() and is_training_checkpoint(p)] if run_dir.is_dir() else []
    return sorted(found, key=lambda p: int(_CHECKPOINT_NAME.fullmatch(p.name).group(1)))
