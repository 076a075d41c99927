"""Training on two CPU processes under FSDP2 and DDP (gloo), and on one under DeepSpeed ZeRO: the same weights as one process
with the same global batch, sharded checkpoints in FSDP's own format, resume after SIGKILL,
and the `[CLS]` row and head reaching every rank under CPU-efficient loading.

The workers (tests/sharded_worker.py) train the tiny recipe for 10 fp32 AdamW steps with 4
examples per rank and a checkpoint every 5 steps; the reference here trains one process with
8 per step. accelerate runs FSDP only on accelerator devices, so tests/fsdp_on_cpu.py lets it
run on CPU processes; torch's FSDP2 itself does (DTensor shards over gloo).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safesignal import SafetyModel
from safesignal.training import train

from sharded_worker import STEPS, worker_config

REPO = Path(__file__).resolve().parents[1]
# Measured max |Δw| against one process after 10 steps: 6e-8 (FSDP2) and 1.3e-7 (DDP); a
# rank starting from other weights without the broadcast ends 0.13 away.
TOLERANCE = 1e-5


def launch(out: Path, engine: str, *flags: str, processes: int = 2, expect_ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(REPO / "tests" / "sharded_worker.py"), str(out), engine, *flags]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if expect_ok:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    final = run / "final"
    return {**load_file(str(final / "model.safetensors")), **load_file(str(final / "safety_head.safetensors"))}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, 8 examples per step: the weights every two-process run must end at."""
    out = tmp_path_factory.mktemp("one_process")
    train(worker_config(out / "run", per_device_batch=8))
    return final_weights(out / "run")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """tiny-llama's weights as an HF directory: DeepSpeed ZeRO-3 builds models inside
    `zero.Init`, which initialises a model built from a config anew, so it loads these."""
    from safesignal.tiny import build_tiny

    path = tmp_path_factory.mktemp("base")
    model, tokenizer = build_tiny("llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


ZERO_STAGES = [pytest.param(engine, marks=pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                                               reason="deepspeed is not installed (the deepspeed extra)"))
               for engine in ("zero2", "zero3")]


@pytest.mark.parametrize("engine", ZERO_STAGES)
def test_deepspeed_zero_trains_like_one_process_and_writes_its_own_checkpoints(tmp_path, reference, base_dir, engine):
    # One process (DeepSpeed's CPU accelerator), 8 examples per step: this checks ZeRO's
    # sharded init (the [CLS] row is read through zero.Init's partitions), save and load, not
    # gradient sync. Before the row was gathered, ZeRO-3 failed at the model's construction.
    launch(tmp_path, engine, "--base", str(base_dir), "--per-device-batch", "8", processes=1)
    assert max_difference(final_weights(tmp_path / "run"), reference) <= TOLERANCE
    checkpoint = tmp_path / "run" / "checkpoint-5"
    assert json.loads((checkpoint / "engine.json").read_text())["engine"] == "deepspeed"
    assert (checkpoint / "latest").read_text().strip() == "global_step5"
    assert list((checkpoint / "global_step5").glob("*optim_states.pt"))


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    launch(out, "fsdp")
    return out


def test_fsdp_on_two_processes_ends_at_the_weights_of_one_process(fsdp_run, reference):
    start = SafetyModel.from_pretrained("tiny-llama")
    moved = (final_weights(fsdp_run / "run")["cls_embedding"] - start.cls_embedding).abs().max().item()
    assert moved > 100 * TOLERANCE  # training moved the [CLS] row: the equality is not vacuous
    assert max_difference(final_weights(fsdp_run / "run"), reference) <= TOLERANCE
    # The final model is a normal safesignal checkpoint: it loads and classifies in one process.
    assert 0.0 <= SafetyModel.from_pretrained(fsdp_run / "run" / "final").classify("Hi") <= 1.0


def test_fsdp_wraps_each_decoder_layer_from_the_models_own_no_split_modules(fsdp_run):
    units = json.loads((fsdp_run / "fsdp_units.json").read_text())
    assert units == ["FSDPLlamaDecoderLayer", "FSDPLlamaDecoderLayer", "FSDPSafetyModel"]


def test_fsdp_checkpoints_hold_each_ranks_shard_and_no_pickle_of_ours(fsdp_run):
    checkpoint = fsdp_run / "run" / "checkpoint-5"
    assert json.loads((checkpoint / "engine.json").read_text())["engine"] == "fsdp"
    for engine_dir in ("pytorch_model_fsdp_0", "optimizer_0"):  # torch.distributed.checkpoint, one file per rank
        assert sorted(p.name for p in (checkpoint / engine_dir).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    ours = [p for p in checkpoint.iterdir() if p.is_file()]
    assert {p.suffix for p in ours} <= {".json", ".safetensors"}
    assert {"trainer_state.json", "safesignal.json", "scheduler.safetensors", "rng_state_0.safetensors",
            "rng_state_1.safetensors"} <= {p.name for p in ours}
    assert not (checkpoint / "model.safetensors").exists()  # the weights are the shards, not gathered


def test_an_fsdp_checkpoint_is_not_resumed_by_another_engine(fsdp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fsdp_run / "run", run)
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoint-10")
    with pytest.raises(ValueError, match="written under fsdp, resumed under DDP / one process"):
        train(worker_config(run, per_device_batch=8), resume=True)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp", *ZERO_STAGES[1:]])
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, reference, base_dir, engine):
    # ZeRO-3 runs one process with the whole batch; the others two processes with half each.
    setup = (["--base", str(base_dir), "--per-device-batch", "8"], 1) if engine == "zero3" else ([], 2)
    killed = launch(tmp_path, engine, "--kill-at", "7", *setup[0], processes=setup[1], expect_ok=False)
    assert killed.returncode != 0
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-5"]
    assert not (run / "final").exists()
    launch(tmp_path, engine, "--resume", *setup[0], processes=setup[1])
    steps = json.loads((tmp_path / "steps_run.json").read_text())
    assert steps == {"steps": STEPS - 5, "global_step": STEPS}  # it went on from step 5, not from scratch
    assert max_difference(final_weights(run), reference) <= TOLERANCE


@pytest.mark.slow
def test_cpu_efficient_loading_gives_every_rank_the_cls_row_and_head_of_rank_0(tmp_path, reference):
    # Rank 1 builds its model from other random weights, so its [CLS] row and head differ.
    launch(tmp_path / "broadcast", "fsdp", "--rank1-elsewhere", "--cpu-efficient-loading")
    start = torch.load(tmp_path / "broadcast" / "rank1_start.pt")
    ours = SafetyModel.from_pretrained("tiny-llama")
    assert (start["cls_embedding"] - ours.cls_embedding).abs().max() > 1e-3
    assert max_difference(final_weights(tmp_path / "broadcast" / "run"), reference) <= TOLERANCE
    # Control: without the broadcast rank 1 trains its own shard of other weights.
    launch(tmp_path / "control", "fsdp", "--rank1-elsewhere")
    assert max_difference(final_weights(tmp_path / "control" / "run"), reference) > 100 * TOLERANCE


@pytest.mark.slow
def test_lora_under_fsdp2_trains_the_adapter_row_and_head_like_one_process(tmp_path):
    train(worker_config(tmp_path / "one" / "run", per_device_batch=8, lora=True))
    launch(tmp_path / "fsdp", "fsdp", "--lora")

    def adapter(run: Path) -> dict[str, torch.Tensor]:
        final = run / "final"
        return {**load_file(str(final / "adapter_model.safetensors")), **load_file(str(final / "safety_head.safetensors"))}

    one, sharded = adapter(tmp_path / "one" / "run"), adapter(tmp_path / "fsdp" / "run")
    assert len(one) > 3  # LoRA matrices beside the [CLS] row and head
    assert max_difference(sharded, one) <= TOLERANCE
    assert json.loads((tmp_path / "fsdp" / "run" / "checkpoint-5" / "engine.json").read_text())["engine"] == "fsdp"


@pytest.mark.parametrize("version, orig_params, use_lora, refused", [
    (1, False, True, True), (1, True, True, False), (2, False, True, False), (1, False, False, False)])
def test_lora_under_fsdp1_needs_original_parameters(version, orig_params, use_lora, refused):
    from types import SimpleNamespace

    from safesignal.training.engines import check_engine_supports

    plugin = SimpleNamespace(fsdp_version=version, use_orig_params=orig_params)
    trainer = SimpleNamespace(is_fsdp_enabled=True, accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))
    if refused:
        with pytest.raises(ValueError, match="use_orig_params: true"):
            check_engine_supports(trainer, use_lora)
    else:
        check_engine_supports(trainer, use_lora)
