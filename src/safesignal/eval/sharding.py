"""Sharded evaluation: one grid run by several processes (`torchrun`, `accelerate launch`).

Every process runs the same grid code in the same order (SPMD). The work that parallelises,
the generation batches of an entry's cells and an attack's per-behaviour searches, is dealt out
in rounds (`fill_cells`): in each round rank r computes the r-th of the next `world` missing
units, and rank 0 gathers the round and appends it to the cell files in unit order, exactly as
one process appends them. A unit is a whole batch as `length_batches` cuts it from the cell's cases alone,
so every record is computed with the same batch-mates whatever the number of processes, and
the cell files and results.json are those one process writes. Cells written by any number of
processes resume under any other number: a file holds batches by index, never by rank.

Rank 0 owns the output directory (it alone opens, sets aside and writes cells, claims entry
directories and writes results.json) and computes what is not split: the judges' audit, the
classifier metrics, utility, overhead and the streaming benchmark; the other ranks wait for it
at their next collective. Other ranks only read files another entry of the run wrote (a
transfer attack's search file), so the output directory must be one filesystem every process
sees; `check_shared_directory` verifies that before anything is computed.

Object collectives travel over a gloo group (CPU), whatever backend the caller's process group
uses, so this works on CPU-only machines and beside NCCL alike.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, NamedTuple

# The other ranks wait in a collective while rank 0 computes the unsplit figures (the
# streaming benchmark of a 7B model takes a while); a crashed rank is ended by the launcher,
# which stops the others, so this only bounds a silent hang.
COLLECTIVE_TIMEOUT = timedelta(hours=12)


class WorldMismatch(RuntimeError):
    """A misconfigured world: the processes disagree on what they run (config, code, weights,
    files), or a command that does not share its work was launched as several processes."""


@dataclass(frozen=True)
class Shard:
    """This process's place in the run: rank `rank` of `world`, collectives through `group`."""

    rank: int = 0
    world: int = 1
    group: object = None  # a torch.distributed gloo group (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0 (None on the others)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def all_gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def agree(self, what: str, value) -> None:
        """Fail on every rank, naming the ranks and fields that differ, unless every rank holds
        the same `value` (a dict compares field by field)."""
        values = self.all_gather(value)
        wrong = [r for r, v in enumerate(values) if v != values[0]]
        if not wrong:
            return
        r = wrong[0]
        fields = _differing_fields(values[0], values[r])
        raise WorldMismatch(f"sharded eval: rank {r} of {self.world} has another {what} than rank 0"
                            + (f" (differs in: {', '.join(fields)})" if fields else "")
                            + (f"; ranks {wrong} in all" if len(wrong) > 1 else "")
                            + ". Every process must run the same command on the same code, files and weights.")


SINGLE = Shard()


def launched_world() -> int:
    """How many processes the launcher started (torchrun and accelerate launch set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_world() -> tuple[Shard, Callable[[], None]]:
    """This process's Shard under torchrun / accelerate launch (WORLD_SIZE > 1; both launchers
    set WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT), else the single process; and what to
    call when the run ends (leaves a process group this call started)."""
    if launched_world() <= 1:
        return SINGLE, lambda: None
    import torch.distributed as dist

    if dist.is_initialized():
        # the caller's group (NCCL, say): objects travel over a gloo group of our own
        group = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
        return Shard(dist.get_rank(), dist.get_world_size(), group), lambda: dist.destroy_process_group(group)
    dist.init_process_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    return Shard(dist.get_rank(), dist.get_world_size()), dist.destroy_process_group


class CellJob(NamedTuple):
    """A cell to fill: rank 0 opens its file (a store.CellFile); its units (batch indices, or a
    search's behaviour keys); what computes one unit's records."""

    open_cell: Callable
    keys: list
    compute: Callable


class Filled(NamedTuple):
    done: dict  # key → records, for every key, on every rank
    reused: int  # keys the cell already held (read back, not computed)
    computed_here: int  # keys this rank computed


def fill_cells(shard: Shard | None, jobs: list[CellJob], *, desc: str = "", unit: str = "batch",
               progress: bool = False) -> list[Filled]:
    """Every unit's records in each job's cell, the missing units computed by the ranks together.

    Rank 0 opens the cells and lists the missing (cell, key) units in job then key order; the
    ranks compute them in rounds of one unit per rank, and rank 0 appends each round in that
    order, so a killed run loses at most one round and every file has the lines, in the order,
    one process would have written. Units of several cells share rounds: an entry's many
    one-batch cells are spread over the ranks too."""
    from tqdm import tqdm

    shard = shard or SINGLE
    cells = [job.open_cell() for job in jobs] if shard.is_main else None
    todo = shard.broadcast([(j, key) for j, (job, cell) in enumerate(zip(jobs, cells))
                            for key in dict.fromkeys(job.keys) if key not in cell.done] if shard.is_main else None)
    computed_here = [0] * len(jobs)
    bar = tqdm(total=len(todo), desc=desc, unit=unit, leave=False, disable=not (progress and shard.is_main and todo))
    for start in range(0, len(todo), shard.world):
        round_units = todo[start:start + shard.world]
        mine = None
        if shard.rank < len(round_units):
            j, key = round_units[shard.rank]
            mine = jobs[j].compute(key)
            computed_here[j] += 1
        made = shard.gather(mine)
        if shard.is_main:
            for (j, key), records in zip(round_units, made):
                cells[j].add(key, records)
        bar.update(len(round_units))
    bar.close()
    done = shard.broadcast([{key: cell.done[key] for key in job.keys} for job, cell in zip(jobs, cells)]
                           if shard.is_main else None)
    missing = [sum(1 for j, _ in todo if j == i) for i in range(len(jobs))]
    return [Filled(d, len(set(job.keys)) - m, c) for job, d, m, c in zip(jobs, done, missing, computed_here)]


def check_shared_directory(shard: Shard, directory: Path) -> None:
    """Fail unless every rank reads what rank 0 writes into `directory`: a multi-node run
    needs its output directory on a filesystem every node mounts at the same path."""
    if shard.world == 1:
        return
    token = shard.broadcast(secrets.token_hex(8))
    probe = Path(directory) / f".shard-probe-{token}"
    if shard.is_main:
        probe.write_text(token, encoding="utf-8")
    shard.barrier()  # written before any rank looks
    seen = shard.all_gather(probe.read_text(encoding="utf-8") if probe.is_file() else None)
    if shard.is_main:  # (the all_gather: every rank has read it)
        probe.unlink()
    blind = [r for r, t in enumerate(seen) if t != token]
    if blind:
        raise WorldMismatch(f"sharded eval: rank(s) {blind} cannot read what rank 0 writes in {directory}; "
                            "put --out on a filesystem every process shares (same path on every node)")


def _differing_fields(a, b) -> list[str]:
    """The dotted paths of the fields where two dicts differ (nested dicts followed down)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return []
    out = []
    for key in sorted(set(a) | set(b), key=str):
        if a.get(key) == b.get(key):
            continue
        inner = _differing_fields(a.get(key), b.get(key))
        out += [f"{key}.{k}" for k in inner] if inner else [str(key)]
    return out
