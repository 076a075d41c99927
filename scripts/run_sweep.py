"""Train the cls recipe's sweep variants (configs/smollm2/sweep/) one after the other.

    python scripts/run_sweep.py [--only r64,steps_240] [--dry-run]

Data builds (`data_*.yaml`) a variant trains on are built first when their directory holds no
summary.json. A variant whose final model exists is skipped; one with checkpoints in its
output directory (a killed run) resumes from the newest. Runs one job at a time: on a small
CPU machine two trainings at once are each about three times slower. Afterwards:

    safesignal eval --config configs/eval/sweep.yaml
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from safesignal.checkpoint import is_checkpoint
from safesignal.config import read_yaml
from safesignal.data.build import is_data_dir

SWEEP = Path(__file__).resolve().parents[1] / "configs" / "smollm2" / "sweep"
DATA_PREFIX = "data_"


def variants() -> list[Path]:
    return sorted(p for p in SWEEP.glob("*.yaml") if not p.name.startswith(DATA_PREFIX))


def data_builds() -> dict[Path, Path]:
    """Each data build's output directory → its config file."""
    return {Path(read_yaml(p)["out_dir"]): p for p in sorted(SWEEP.glob(f"{DATA_PREFIX}*.yaml"))}


def run(command: list[str], dry_run: bool) -> None:
    print("+ " + " ".join(command), flush=True)
    if not dry_run:
        subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated variant names (file stems); default: all")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    args = parser.parse_args(argv)
    chosen = variants()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {p.stem for p in chosen}
        if unknown:
            raise SystemExit(f"--only: no variant {sorted(unknown)} in {SWEEP}")
        chosen = [p for p in chosen if p.stem in wanted]
    builds = data_builds()
    for path in chosen:
        config = read_yaml(path)
        final = Path(config["final_dir"])
        if is_checkpoint(final):
            print(f"{path.stem}: trained ({final}); skipped")
            continue
        data_dir = Path(config["train_file"]).parent
        if data_dir in builds and not is_data_dir(data_dir):
            run([sys.executable, "-m", "safesignal", "data", "build", "--config", str(builds[data_dir])], args.dry_run)
        resume = list(Path(config["output_dir"]).glob("checkpoint-*"))
        run([sys.executable, "-m", "safesignal", "train", "--config", str(path)] + (["--resume"] if resume else []),
            args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
