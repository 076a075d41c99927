"""Export the embedded models a previous commit shipped, so a release can be measured beside
the one before it in the same eval run (same prompts, same sets, same judges).

    python scripts/export_release.py --rev 4cee113~1 --tag v1
    # -> $SAFESIGNAL_HOME/models/smollm2-{sft,qi_aug,cls}-v1, loadable by path

Each model directory is read from git as it was committed at `--rev` (nothing is retrained);
a release that shipped its tokenizer once (`extra.shared_tokenizer`) gets that directory too,
beside the models, so the relative reference still resolves. A target that exists and is not
such an export is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from safesignal.checkpoint import CHECKPOINT_CONFIG, SHARED_TOKENIZER_KEY
from safesignal.home import safesignal_home
from safesignal.io import NotOursError, replace_directory
from safesignal.registry import SHIPPED_NAMES

REPO = Path(__file__).resolve().parents[1]
PACKAGE_MODELS = "src/safesignal/resources/models"
MARKER = "exported_from.json"  # written into each export: what it is and where it came from


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def files_at(repo: Path, rev: str, directory: str) -> list[str]:
    listing = git(repo, "ls-tree", "-r", "--name-only", rev, "--", directory).decode().splitlines()
    return [path for path in listing if path.startswith(directory + "/")]


def is_export(path: Path) -> bool:
    return (path / MARKER).is_file()


def export_directory(repo: Path, rev: str, source: str, target: Path) -> None:
    """Write `source` (a directory in the tree at `rev`) to `target` through
    `safesignal.io.replace_directory` (staged, then swapped in; only an earlier export replaced)."""
    paths = files_at(repo, rev, source)
    if not paths:
        raise SystemExit(f"{source}: not in the tree at {rev}")
    commit = git(repo, "rev-parse", rev).decode().strip()

    def fill(staging: Path) -> None:
        for path in paths:
            out = staging / Path(path).relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(git(repo, "show", f"{rev}:{path}"))
        (staging / MARKER).write_text(json.dumps({"rev": rev, "commit": commit, "source": source}, indent=1) + "\n")

    try:
        replace_directory(target, fill, is_ours=is_export, what="release export")
    except NotOursError:
        raise SystemExit(f"{target}: exists and is not an export of this script; move it away first") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="the git revision whose shipped models to export")
    parser.add_argument("--tag", required=True, help="suffix of the exported directories (smollm2-sft-TAG)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the git repository (default: this checkout)")
    args = parser.parse_args(argv)
    models = safesignal_home() / "models"
    for name in SHIPPED_NAMES:
        source = f"{PACKAGE_MODELS}/{name}"
        target = models / f"{name}-{args.tag}"
        export_directory(args.repo, args.rev, source, target)
        config = json.loads((target / CHECKPOINT_CONFIG).read_text())
        shared = (config.get("extra") or {}).get(SHARED_TOKENIZER_KEY)
        if shared:  # relative to the model directory: export it beside the models, tagged the same
            tokenizer_name = Path(shared).name
            export_directory(args.repo, args.rev, f"{PACKAGE_MODELS}/{tokenizer_name}", models / f"{tokenizer_name}-{args.tag}")
            config["extra"][SHARED_TOKENIZER_KEY] = f"../{tokenizer_name}-{args.tag}"
            (target / CHECKPOINT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        print(f"{name} at {args.rev} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
