"""The memory-mapped encoded store: same examples, order and balancing as encoding records in
memory; any file format the data tools read; built once per data file and reused."""

import csv
import json
import pickle
import random
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

import safesignal.data.encoded_store as encoded_store
import safesignal.training.trainer as trainer_module
from safesignal import SafetyModel
from safesignal.config import load_config
from safesignal.data.dataset import EncodedDataset, balanced_indices, encode_records
from safesignal.data.encoded_files import encoded_file
from safesignal.data.encoded_store import EncodedStore, write_store
from safesignal.data.schema import DataError, parse_record, read_jsonl
from safesignal.formatting import EncodedExample, PromptFormatter
from safesignal.tiny import build_tiny
from safesignal.training import SafetyTrainingConfig, train

REPO = Path(__file__).resolve().parents[1]
TOY_TRAIN = REPO / "configs" / "data" / "toy_train.jsonl"
TINY_YAML = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def formatter():
    torch.manual_seed(0)
    model, tokenizer = build_tiny("llama")
    return SafetyModel(model, tokenizer).formatter  # with [CLS] added, as training encodes


@pytest.fixture(scope="module")
def toy_examples(formatter):
    return encode_records(read_jsonl(TOY_TRAIN), formatter)


def _all(store: EncodedStore) -> list[EncodedExample]:
    return [store.example(k) for k in range(len(store))]


# ------------------------------------------------------------------ the old in-memory path, as reference
def reference_balanced_indices(labels, seed):
    """The list-based balancing the store replaced, verbatim."""
    counts = Counter(labels)
    indices = list(range(len(labels)))
    if len(counts) < 2:
        return indices
    (majority, n_major), (minority, n_minor) = counts.most_common(2)
    pool = [i for i, y in enumerate(labels) if y == minority]
    rng = random.Random(seed)
    return indices + [rng.choice(pool) for _ in range(n_major - n_minor)]


class ReferenceDataset(torch.utils.data.Dataset):
    """The list-backed EncodedDataset the store replaced, verbatim."""

    def __init__(self, examples, *, balance=False, seed=0):
        self.examples = examples
        labels = [e.label if e.label is not None else 0 for e in examples]
        self.indices = reference_balanced_indices(labels, seed) if balance else list(range(len(examples)))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return replace(self.examples[self.indices[i]], sample_key=i)

    def label_counts(self):
        return dict(Counter(self.examples[i].label for i in self.indices))


# ------------------------------------------------------------------ the store
def test_store_gives_back_the_in_memory_examples_of_the_toy_data(formatter, toy_examples, tmp_path):
    store = encoded_file(TOY_TRAIN, formatter, tmp_path)
    assert _all(store) == toy_examples
    assert store.meta["tokens"] == sum(len(e.input_ids) for e in toy_examples)


def test_masks_labels_and_cut_examples_survive_chunks_and_bit_packing(formatter, monkeypatch, tmp_path):
    # Chunks of 3 examples: the packed query mask carries partial bytes from chunk to chunk.
    monkeypatch.setattr(encoded_store, "CHUNK_EXAMPLES", 3)
    short = PromptFormatter(formatter.tokenizer, max_length=40)
    records = [parse_record({"prompt": f"question {k} " * (k % 4 + 1), "response": "Mix flour and water. " * (k % 5 + 1),
                             "label": k % 2, "source": "t",
                             **({"response_labels": [[0, 5, 1], [6, 11, 0]]} if k % 3 == 0 else {})}, f"t:{k}")
               for k in range(10)]
    examples = encode_records(records, short)
    examples.append(replace(examples[0], label=None))
    odd = examples[1]  # no token labels; one token shorter, so the total is not a whole number of bytes
    examples.append(replace(odd, input_ids=odd.input_ids[:-1], query_mask=odd.query_mask[:-1],
                            supervised_from=min(odd.supervised_from, len(odd.input_ids) - 1)))
    assert any(len(e.input_ids) == 40 for e in examples) and any(e.token_labels for e in examples)
    assert sum(len(e.input_ids) for e in examples) % 8  # the last byte is partial
    store = write_store(examples, tmp_path / "store", len(short.tokenizer))
    assert _all(store) == examples
    assert store.example(4, sample_key=7) == replace(examples[4], sample_key=7)


def test_token_ids_are_uint16_when_the_vocabulary_fits_and_int32_otherwise():
    assert encoded_store.token_dtype(49152) == np.uint16
    assert encoded_store.token_dtype(2**16) == np.uint16
    assert encoded_store.token_dtype(2**16 + 1) == np.int32
    assert encoded_store.token_dtype(152_064) == np.int32  # Qwen2


def test_a_pickled_store_carries_its_directory_not_its_arrays(formatter, toy_examples, tmp_path):
    store = encoded_file(TOY_TRAIN, formatter, tmp_path)
    store.example(0)  # maps the arrays
    copy = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 2000 < store.disk_bytes()
    assert _all(copy) == toy_examples


# ------------------------------------------------------------------ balancing
@pytest.mark.parametrize("labels", [[0] * 10 + [1] * 3, [1, 0, 0, 1, 1, 1, 0], [0, 0, 0], [1, 0] * 4])
def test_balanced_indices_are_the_list_based_sequence(labels):
    assert balanced_indices(labels, seed=3).tolist() == reference_balanced_indices(labels, 3)


def test_balanced_indices_match_at_scale():
    labels = [int(x) for x in np.random.default_rng(0).random(50_000) < 0.3]
    assert balanced_indices(np.array(labels, dtype=np.int8), seed=11).tolist() == reference_balanced_indices(labels, 11)


def test_dataset_serves_what_the_list_based_dataset_served(formatter, toy_examples, tmp_path):
    store = encoded_file(TOY_TRAIN, formatter, tmp_path)
    for balance in (False, True):
        new, old = EncodedDataset(store, balance=balance, seed=5), ReferenceDataset(toy_examples, balance=balance, seed=5)
        assert len(new) == len(old)
        assert [new[i] for i in range(len(new))] == [old[i] for i in range(len(old))]
        assert list(new.label_counts().items()) == list(old.label_counts().items())  # same order too


def test_tiny_recipe_trains_to_the_same_weights_as_with_the_list_based_dataset(monkeypatch, tmp_path):
    def config(run):
        return load_config(SafetyTrainingConfig, TINY_YAML, ["--output_dir", str(tmp_path / run), "--disable_tqdm", "true",
                                                             "--num_train_epochs", "2", "--save_strategy", "no"])

    store_final = train(config("store"))

    def reference_datasets(cfg, model):
        formatter = PromptFormatter(model.tokenizer, max_length=cfg.max_length)
        return (ReferenceDataset(encode_records(read_jsonl(cfg.train_file), formatter), balance=cfg.balance_classes,
                                 seed=cfg.seed),
                ReferenceDataset(encode_records(read_jsonl(cfg.eval_file), formatter)))

    monkeypatch.setattr(trainer_module, "build_datasets", reference_datasets)
    reference_final = train(config("reference"))
    for name in ("model.safetensors", "safety_head.safetensors"):
        new, old = load_file(str(store_final / name)), load_file(str(reference_final / name))
        assert new.keys() == old.keys()
        assert all(torch.equal(new[k], old[k]) for k in new), name
    assert (json.loads((store_final / "train_metrics.json").read_text())["labels"]
            == json.loads((reference_final / "train_metrics.json").read_text())["labels"])
    assert (store_final / ".." / ".encoded").resolve().is_dir()


# ------------------------------------------------------------------ users' own files
def _toy_rows():
    """The toy records as plain columns: user prompt, response, label."""
    rows = []
    for line in TOY_TRAIN.read_text().splitlines():
        obj = json.loads(line)
        user, assistant = obj["messages"]
        rows.append({"prompt": user["content"], "response": assistant["content"], "label": obj["label"]})
    return rows


def test_parquet_csv_and_hf_files_give_the_examples_of_the_jsonl_file(formatter, toy_examples, tmp_path):
    from datasets import Dataset, DatasetDict

    records = [json.loads(line) for line in TOY_TRAIN.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "records.parquet", row_group_size=7)
    DatasetDict({"train": Dataset.from_list(records)}).save_to_disk(str(tmp_path / "records_hf"))
    with (tmp_path / "own.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["question", "answer", "is_harmful"])
        writer.writeheader()
        writer.writerows({"question": r["prompt"], "answer": r["response"], "is_harmful": r["label"]} for r in _toy_rows())
    own = {"prompt": "question", "response": "answer", "label": "is_harmful"}
    cache = tmp_path / "cache"
    assert _all(encoded_file(tmp_path / "records.parquet", formatter, cache)) == toy_examples
    with pytest.raises(ValueError, match=r"records_hf: a saved HF DatasetDict; give the directory of one split \(.*records_hf/train\)"):
        encoded_file(tmp_path / "records_hf", formatter, cache)
    assert _all(encoded_file(tmp_path / "records_hf" / "train", formatter, cache)) == toy_examples
    assert _all(encoded_file(tmp_path / "own.csv", formatter, cache, style="columns", columns=own)) == toy_examples
    assert len(list(cache.iterdir())) == 3


def test_every_bad_row_is_named_with_file_row_and_field_and_no_store_is_left(formatter, tmp_path):
    path = tmp_path / "own.csv"
    path.write_text("question,answer,is_harmful\n"
                    "How do I bake bread?,Knead it.,0\n"
                    "How do I pick a lock?,No.,\n"            # no label
                    "What is tea?,,0\n"                       # no response
                    "Is this ok?,Yes.,maybe\n"                # not a label
                    "too,few\n"
                    + "word " * 200 + ",x,1\n")               # prompt longer than max_length
    short = PromptFormatter(formatter.tokenizer, max_length=64)
    with pytest.raises(DataError) as err:
        encoded_file(path, short, tmp_path / "cache", style="columns",
                     columns={"prompt": "question", "response": "answer", "label": "is_harmful"})
    *read, encoding = err.value.problems
    assert read == [
        f"{path}:3: is_harmful: expected 0 / 1 (benign / malicious), got ''",
        f"{path}:4: response: missing or empty (training records need an assistant response)",
        f"{path}:5: is_harmful: expected 0 / 1 (benign / malicious), got 'maybe'",
        f"{path}:6: expected 3 fields (the header's), got 2",
    ]
    assert re.fullmatch(rf"{re.escape(str(path))}:7: messages: prompt is \d+ tokens, longer than max_length=64", encoding)
    assert not any((tmp_path / "cache").iterdir())  # no store, no staging left behind


def test_a_records_file_without_labels_is_refused_not_read_as_malicious(formatter, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "response": "Hello.", "source": "s"}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: label: missing"):
        encoded_file(path, formatter, tmp_path / "cache")


# ------------------------------------------------------------------ the cache
def test_a_store_is_reused_until_the_file_tokenizer_or_length_changes(formatter, monkeypatch, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(TOY_TRAIN.read_text())
    cache = tmp_path / "cache"
    first = encoded_file(path, formatter, cache)
    built = []
    original = encoded_store.write_store
    monkeypatch.setattr("safesignal.data.encoded_files.write_store", lambda *a, **k: built.append(1) or original(*a, **k))
    assert encoded_file(path, formatter, cache).directory == first.directory and not built
    shorter = encoded_file(path, PromptFormatter(formatter.tokenizer, max_length=64), cache)
    path.write_text(TOY_TRAIN.read_text().replace("tomatoes", "potatoes"))
    edited = encoded_file(path, formatter, cache)
    other_tokenizer = encoded_file(path, PromptFormatter(build_tiny("llama")[1]), cache)  # no [CLS] added
    assert len(built) == 3
    assert len({first.directory, shorter.directory, edited.directory, other_tokenizer.directory}) == 4
    assert max(len(e.input_ids) for e in _all(shorter)) == 64
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_store_built_meanwhile_by_another_process_is_used_not_replaced(formatter, toy_examples, monkeypatch, tmp_path):
    import safesignal.data.encoded_files as encoded_files

    first = encoded_file(TOY_TRAIN, formatter, tmp_path)
    inode = first.directory.stat().st_ino
    checks, real = [], encoded_files.is_store

    def looks_too_early(path):  # this process looks before the other has renamed its store into place
        checks.append(path)
        return len(checks) > 1 and real(path)

    monkeypatch.setattr(encoded_files, "is_store", looks_too_early)
    second = encoded_file(TOY_TRAIN, formatter, tmp_path)
    assert len(checks) == 2 and second.directory == first.directory and first.directory.stat().st_ino == inode
    assert _all(second) == toy_examples
    assert [p.name for p in tmp_path.iterdir()] == [first.directory.name]  # its staging removed


def test_trainer_reads_a_parquet_file_with_its_own_columns(tmp_path):
    rows = _toy_rows()
    pq.write_table(pa.Table.from_pylist([{"q": r["prompt"], "a": r["response"], "harmful": bool(r["label"]) * 1}
                                         for r in rows]), tmp_path / "train.parquet")
    config = load_config(SafetyTrainingConfig, TINY_YAML, [
        "--output_dir", str(tmp_path / "run"), "--disable_tqdm", "true", "--num_train_epochs", "1",
        "--save_strategy", "no", "--train_file", str(tmp_path / "train.parquet"), "--eval_file", str(tmp_path / "train.parquet"),
        "--data_file_style", "columns", "--data_file_columns", "prompt=q", "response=a", "label=harmful",
        "--encoded_cache_dir", str(tmp_path / "shared")])
    final = train(config)
    labels = Counter(r["label"] for r in rows)
    assert json.loads((final / "train_metrics.json").read_text())["labels"] == {"1": max(labels.values()),
                                                                                "0": max(labels.values())}
    assert len(list((tmp_path / "shared").iterdir())) == 1  # train and eval: the same file, one store
    assert not (tmp_path / "run" / ".encoded").exists()


def test_config_refuses_an_unknown_style_and_a_malformed_rename(tmp_path):
    base = ["--output_dir", str(tmp_path / "run")]
    with pytest.raises(ValueError, match="data_file_style: 'sharegpt' is not one of"):
        load_config(SafetyTrainingConfig, TINY_YAML, base + ["--data_file_style", "sharegpt"])
    with pytest.raises(ValueError, match="data_file_columns: 'prompt' is not field=column"):
        load_config(SafetyTrainingConfig, TINY_YAML, base + ["--data_file_columns", "prompt"])
