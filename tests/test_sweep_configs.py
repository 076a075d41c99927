"""The trade-off sweep's configs (configs/smollm2/sweep/): each variant is the cls recipe with
its own knobs changed and its own output paths, and the sweep's eval grid covers them all."""

from pathlib import Path

from safesignal.config import load_config
from safesignal.eval.config import load_eval_config
from safesignal.training.config import SafetyTrainingConfig

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "configs" / "smollm2" / "sweep"
RECIPE = ROOT / "configs" / "smollm2" / "cls.yaml"
PATHS = {"output_dir", "final_dir", "logging_dir"}


def changed_fields(path: Path) -> dict:
    recipe, variant = load_config(SafetyTrainingConfig, RECIPE), load_config(SafetyTrainingConfig, path)
    return {name: getattr(variant, name) for name in SafetyTrainingConfig.__dataclass_fields__
            if name not in PATHS and getattr(variant, name) != getattr(recipe, name)}


def test_each_variant_changes_a_knob_and_writes_only_under_the_sweep_directories(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFESIGNAL_HOME", str(tmp_path))
    variants = load_script("run_sweep").variants()
    assert len(variants) >= 6
    finals = set()
    for path in variants:
        changed = changed_fields(path)
        assert changed, f"{path.name}: identical to the recipe"
        # a variant changes at most two knobs (full fine-tuning needs its own learning rate)
        assert len(changed) <= 2 + ("save_steps" in changed), f"{path.name}: {sorted(changed)}"
        config = load_config(SafetyTrainingConfig, path)
        assert Path(config.output_dir) == tmp_path / "runs" / "sweep" / path.stem
        assert Path(config.final_dir) == tmp_path / "models" / "sweep" / path.stem
        finals.add(config.final_dir)
    assert len(finals) == len(variants)


def test_data_variants_are_built_where_their_recipes_read_and_the_grid_names_every_variant(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFESIGNAL_HOME", str(tmp_path))
    script = load_script("run_sweep")
    builds = script.data_builds()
    assert builds and all(out.parent == tmp_path / "data" for out in builds)
    readers = {Path(load_config(SafetyTrainingConfig, p).train_file).parent for p in script.variants()}
    assert set(builds) <= readers  # no data build that no variant reads
    grid = load_eval_config(ROOT / "configs" / "eval" / "sweep.yaml")
    paths = {Path(m.path) for m in grid.models}
    assert {Path(load_config(SafetyTrainingConfig, p).final_dir) for p in script.variants()} == paths - {Path("smollm2-cls")}


def test_run_sweep_trains_in_the_order_given_and_measures_what_is_trained(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAFESIGNAL_HOME", str(tmp_path))
    trained = tmp_path / "models" / "sweep" / "r64"
    trained.mkdir(parents=True)
    (trained / "safesignal.json").write_text('{"format": "safesignal-checkpoint"}')
    script = load_script("run_sweep")
    assert script.main(["--only", "steps_240,r64", "--eval", str(tmp_path / "ev"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    measured = [line for line in lines if " eval " in line]
    assert len(measured) == 2 and all(line.endswith("--models cls,r64") for line in measured)
    assert "--config" in lines[1] and lines[1].endswith("steps_240.yaml")  # after the first eval
    assert lines[-1].startswith("r64: trained")
