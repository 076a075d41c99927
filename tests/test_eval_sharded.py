"""`safesignal eval` under torchrun: two CPU processes write the files one process writes.

The tiny grid runs once in one process and once in two (`torch.distributed.run`, gloo), each
as `python -m safesignal` in its own directory with the relative `--out run`, so the command
and config they record are the same text. Both runs use one thread per process.

Fields that may differ, and why (TIMINGS below): `created`, `wall_seconds` and each entry's
`seconds` are clocks; the default entry's `overhead` times decoding (decode_ratio, plain_s,
strategic_s), a measurement of speed that is never the same twice (and its cached
`cells/<entry>/overhead.json` with it); `machine` names the threads per process, which a
launcher sets (torchrun sets one per process); `provenance.git_commit` is read from the
checkout when each run starts, and another commit landing between the two runs changes it,
not the code under test. Everything else, every cell file byte for byte included, is equal.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from safesignal.eval.sharding import SINGLE, WorldMismatch, _differing_fields

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "eval" / "tiny.yaml"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
       "OMP_NUM_THREADS": "1"}
TOP_LEVEL_TIMINGS = ("created", "wall_seconds", "machine")
OVERHEAD_TIMINGS = ("decode_ratio", "plain_s", "strategic_s")
TIMED_CELLS = ("overhead.json",)
TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def without_timings(results: dict) -> dict:
    out = copy.deepcopy({k: v for k, v in results.items() if k not in TOP_LEVEL_TIMINGS})
    out["provenance"].pop("git_commit")
    for entry in out["models"].values():
        entry.pop("seconds")
        for key in OVERHEAD_TIMINGS:
            entry.get("overhead", {}).pop(key, None)
    return out


def resumed_figures(results: dict) -> dict:
    """A resumed run's figures: `reused_batches` counts what it read back instead of computing."""
    return {k: v for k, v in without_timings(results).items() if k != "reused_batches"}


def cell_files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "cells").rglob("*"))
            if p.is_file() and p.name not in TIMED_CELLS}


def eval_in(directory: Path, launcher: list[str], *extra: str) -> subprocess.CompletedProcess:
    """`safesignal eval` on the tiny grid in `directory` (its --out: `directory/run`)."""
    directory.mkdir(parents=True, exist_ok=True)
    command = launcher + ["-m", "safesignal", "eval", "--config", str(TINY), "--out", "run", *extra]
    # a rank left waiting in a collective would hang: time out
    return subprocess.run(command, cwd=directory, env=ENV, capture_output=True, text=True, timeout=300)


def results_of(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("sharded")
    for name, launcher in (("single", [sys.executable]), ("sharded", TWO_PROCESSES)):
        done = eval_in(base / name, launcher)
        assert done.returncode == 0, done.stderr[-4000:]
        if name == "sharded":
            shares = re.search(r"2 processes computed (\d+) \+ (\d+) generation batches", done.stderr)
    return base / "single" / "run", base / "sharded" / "run", [int(n) for n in shares.groups()]


def test_two_processes_write_the_results_one_process_writes(runs):
    single, sharded, _ = runs
    one, two = results_of(single), results_of(sharded)
    assert two["command"] == one["command"] and two["models"].keys() == one["models"].keys()
    assert without_timings(two) == without_timings(one)


def test_two_processes_write_the_same_cell_files_byte_for_byte(runs):
    single, sharded, _ = runs
    one, two = cell_files(single), cell_files(sharded)
    assert sorted(two) == sorted(one) and any("search" in name for name in one)
    assert [name for name in one if one[name] != two[name]] == []


def test_both_processes_computed_a_share_of_the_batches(runs):
    single, _, (rank0, rank1) = runs
    # every batch line of the single run's generation cells (a search's lines are behaviours)
    batches = sum(len(data.decode().splitlines()) - 1 for name, data in cell_files(single).items()
                  if name.endswith(".jsonl") and "/search/" not in name)
    assert rank0 > 0 and rank1 > 0 and rank0 + rank1 == batches
    assert results_of(single)["reused_batches"] == 0


def test_one_process_resumes_a_sharded_run_and_the_comparison_sees_a_changed_row(runs, tmp_path):
    """The control: the comparison above fails when one cell holds other outputs, as it would
    if a split changed any row's batch-mates and so its output."""
    single, sharded, _ = runs
    for name in ("kept", "edited"):
        shutil.copytree(sharded, tmp_path / name / "run")
    cell = tmp_path / "edited" / "run" / "cells" / "cls" / "direct.jsonl"
    header, *lines = cell.read_text().splitlines()
    batch = json.loads(lines[0])
    for record in batch["records"]:
        record["response"] = "I'm sorry, but I cannot help with that."  # every cls direct answer leaks today
    cell.write_text("\n".join([header, json.dumps(batch), *lines[1:]]) + "\n")
    figures = {}
    for name in ("kept", "edited"):
        # In a fresh process, as the runs it is compared with: a results file's provenance lists
        # every data file its process located, so an in-process run would also list the files
        # earlier tests read (left as it is; see the stop note of issue 21).
        done = eval_in(tmp_path / name, [sys.executable])
        assert done.returncode == 0, done.stderr[-4000:]
        figures[name] = results_of(tmp_path / name / "run")
        assert figures[name]["reused_batches"] > 0  # read back, not recomputed
    assert resumed_figures(figures["kept"]) == resumed_figures(results_of(single))
    assert resumed_figures(figures["edited"]) != resumed_figures(results_of(single))
    direct = [results["models"]["cls"]["attacks"]["direct"] for results in (figures["edited"], results_of(single))]
    assert direct[0]["asr_leak"] != direct[1]["asr_leak"]  # the figure the edit changes


def test_two_processes_resume_a_killed_run_of_one_process(runs, tmp_path):
    single, _, _ = runs
    run = tmp_path / "resumed" / "run"
    shutil.copytree(single, run)
    # kill points: a cell cut after its first batch with a torn line, a cell never written, a
    # search stopped after its first behaviour with its generations never written, no results.json
    cell = run / "cells" / "cls" / "gcg_transfer.jsonl"
    lines = cell.read_text().split("\n")
    cell.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    (run / "cells" / "base" / "direct.jsonl").unlink()
    search = run / "cells" / "cls" / "search" / "gcg_adaptive.jsonl"
    search.write_text("\n".join(search.read_text().split("\n")[:2]) + "\n")
    (run / "cells" / "cls" / "gcg_adaptive.jsonl").unlink()
    (run / "results.json").unlink()
    done = eval_in(tmp_path / "resumed", TWO_PROCESSES)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "torn last line" in done.stderr
    resumed = results_of(run)
    assert resumed["reused_batches"] > 0
    assert resumed_figures(resumed) == resumed_figures(results_of(single))
    assert cell_files(run) == cell_files(single)


def test_ranks_that_disagree_on_the_config_stop_before_writing(tmp_path):
    # each rank its own max_new_tokens (8 + rank), as if launched with different commands
    worker = tmp_path / "worker.py"
    worker.write_text("import os, sys\nfrom safesignal.cli import main\n"
                      f"sys.exit(main(['eval', '--config', {str(TINY)!r}, '--out', 'run', "
                      "'--max_new_tokens', str(8 + int(os.environ['RANK']))]))\n")
    done = subprocess.run(TWO_PROCESSES + [str(worker)], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert ("rank 1 of 2 has another eval config than rank 0 (differs in: config.max_new_tokens)"
            in done.stderr), done.stderr[-4000:]
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_a_command_that_does_not_shard_refuses_to_start_as_several_processes(monkeypatch):
    from safesignal.eval.config import load_eval_config
    from safesignal.eval.grid import plan_eval

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; run_eval would join the world
    with pytest.raises(WorldMismatch, match="launched as one of 2 processes"):
        plan_eval(load_eval_config(TINY))


def test_one_process_is_its_own_world():
    assert SINGLE.broadcast({"a": 1}) == {"a": 1} and SINGLE.all_gather(3) == [3] and SINGLE.gather(3) == [3]
    SINGLE.agree("anything", {"a": 1})  # nothing to disagree with


def test_differing_fields_name_the_nested_path():
    a = {"config": {"n": 2, "max_new_tokens": 8, "models": [1]}, "out": "x"}
    b = {"config": {"n": 2, "max_new_tokens": 9, "models": [2]}, "out": "x"}
    assert _differing_fields(a, b) == ["config.max_new_tokens", "config.models"]
    assert issubclass(WorldMismatch, RuntimeError)
