"""A training run never deletes or overwrites a user's files in its output directory."""

import pytest

from safesignal.io import NotOursError
from safesignal.training import train
from safesignal.training.run_directory import RUN_MARKER

from test_train import tiny_config

QUICK = ["--max_steps", "3", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "1",
         "--save_total_limit", "1"]


def test_a_non_empty_directory_that_is_not_a_run_is_refused_untouched(tmp_path):
    user_dir = tmp_path / "run"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("mine")
    with pytest.raises(NotOursError, match=rf"{user_dir}: directory is not empty and does not hold a safesignal "
                                           "training run directory"):
        train(tiny_config(tmp_path, *QUICK))
    assert sorted(p.name for p in user_dir.iterdir()) == ["notes.txt"]
    assert (user_dir / "notes.txt").read_text() == "mine"


def test_rotation_and_reruns_touch_only_the_checkpoints_this_trainer_wrote(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tmp_path, *QUICK))
    assert (run / RUN_MARKER).is_file()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3"]

    # The user then keeps things of theirs in the run directory, one named like a checkpoint.
    (run / "checkpoint-0").mkdir()
    (run / "checkpoint-0" / "notes.txt").write_text("mine")
    (run / "plot.png").write_bytes(b"png")
    train(tiny_config(tmp_path, *QUICK))  # a rerun into the same run: checkpoint-3 is replaced
    assert (run / "checkpoint-0" / "notes.txt").read_text() == "mine"
    assert (run / "plot.png").read_bytes() == b"png"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0", "checkpoint-3"]


def test_a_user_directory_named_like_the_next_checkpoint_is_never_replaced(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tmp_path, *QUICK[:2], "--eval_strategy", "no", "--save_strategy", "no"))
    (run / "checkpoint-1").mkdir()
    (run / "checkpoint-1" / "notes.txt").write_text("mine")
    with pytest.raises(NotOursError, match=r"checkpoint-1: directory is not empty"):
        train(tiny_config(tmp_path, *QUICK))
    assert (run / "checkpoint-1" / "notes.txt").read_text() == "mine"


def test_a_users_final_dir_is_refused_before_any_training(tmp_path, monkeypatch):
    import safesignal.training.trainer as trainer_module

    final = tmp_path / "mine"
    final.mkdir()
    (final / "notes.txt").write_text("mine")
    monkeypatch.setattr(trainer_module.SafetyTrainer, "train", lambda *a, **k: pytest.fail("trained first"))
    with pytest.raises(NotOursError, match=str(final)):
        train(tiny_config(tmp_path, *QUICK, "--final_dir", str(final)))
    assert sorted(p.name for p in final.iterdir()) == ["notes.txt"]
