"""Train the cls recipe's sweep variants (configs/smollm2/sweep/) one after the other.

    python scripts/run_sweep.py [--only r64,steps_240] [--eval DIR] [--dry-run]

Data builds (`data_*.yaml`) a variant trains on are built first when their directory holds no
summary.json. A variant whose final model exists is skipped; one with checkpoints in its
output directory (a killed run) resumes from the newest. Runs one job at a time: on a small
CPU machine two trainings at once are each about three times slower. Afterwards:

    safesignal eval --config configs/eval/sweep.yaml

or, with `--eval DIR`, that grid is run into DIR before the first training and again after
each one, over the models trained so far (`safesignal eval --models`), so that a session cut
short still leaves every finished variant measured; each run reuses the cells of the last.
`--only` trains in the order given.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from safesignal.checkpoint import is_checkpoint
from safesignal.config import read_yaml
from safesignal.data.build import is_data_dir
from safesignal.eval.config import load_eval_config

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "configs" / "smollm2" / "sweep"
GRID = ROOT / "configs" / "eval" / "sweep.yaml"
DATA_PREFIX = "data_"


def variants() -> list[Path]:
    return sorted(p for p in SWEEP.glob("*.yaml") if not p.name.startswith(DATA_PREFIX))


def data_builds() -> dict[Path, Path]:
    """Each data build's output directory → its config file."""
    return {Path(read_yaml(p)["out_dir"]): p for p in sorted(SWEEP.glob(f"{DATA_PREFIX}*.yaml"))}


def trained_entries(grid: Path = GRID) -> list[str]:
    """The grid's model names that can run now: shipped names, and checkpoints that exist."""
    return [m.name for m in load_eval_config(grid).models
            if m.path.startswith("smollm2") or is_checkpoint(Path(m.path))]


def evaluate(out: str, dry_run: bool) -> None:
    run([sys.executable, "-m", "safesignal", "eval", "--config", str(GRID), "--out", out, "--models", ",".join(trained_entries())],
        dry_run)


def run(command: list[str], dry_run: bool) -> None:
    print("+ " + " ".join(command), flush=True)
    if not dry_run:
        subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated variant names (file stems); default: all")
    parser.add_argument("--eval", default=None, metavar="DIR",
                        help=f"run {GRID.relative_to(ROOT)} into DIR first and after each training")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    args = parser.parse_args(argv)
    chosen = variants()
    if args.only:
        wanted = [name for name in args.only.split(",") if name]
        by_stem = {p.stem: p for p in chosen}
        unknown = [name for name in wanted if name not in by_stem]
        if unknown:
            raise SystemExit(f"--only: no variant {unknown} in {SWEEP}")
        chosen = [by_stem[name] for name in wanted]
    builds = data_builds()
    if args.eval:
        evaluate(args.eval, args.dry_run)
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
        if args.eval:
            evaluate(args.eval, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
