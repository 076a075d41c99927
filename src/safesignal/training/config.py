"""`SafetyTrainingConfig`: every knob of a training run, loadable from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from ..data.row_styles import STYLES

ENCODED_CACHE_DIR = ".encoded"

OBJECTIVES = ("cls", "sft")
MODEL_DTYPES = (None, "float32", "bfloat16")


@dataclass
class SafetyTrainingConfig(TrainingArguments):
    """`transformers.TrainingArguments` plus the safesignal fields (`safesignal train --config X.yaml`)."""

    model_name_or_path: str = field(default="tiny-llama", metadata={"help": "HF directory, checkpoint or registry name"})
    train_file: str | None = field(default=None, metadata={
        "help": "training data: JSONL / JSON / CSV / Parquet file or saved HF dataset directory (data/schema.py)"})
    eval_file: str | None = field(default=None, metadata={"help": "validation data (as train_file), evaluated every epoch"})
    data_file_style: str = field(default="records", metadata={
        "help": "how rows of train_file / eval_file become records: records (our schema), columns, alert, lima, "
                "alpaca (data/row_styles.py); every row carries its label"})
    data_file_columns: list[str] | None = field(default=None, metadata={
        "help": "field=column renames for data_file_style, e.g. prompt=question label=is_harmful"})
    encoded_cache_dir: str | None = field(default=None, metadata={
        "help": "where encoded data files are kept for reuse (default output_dir/.encoded; share one across runs)"})
    objective: str = field(default="cls", metadata={"help": "'cls' (LM + λ·BCE) or 'sft' (plain SFT, no [CLS])"})
    cls_loss_weight: float = field(default=0.1, metadata={"help": "λ: weight of the [CLS] BCE loss"})
    mask_mode: str = field(default="sft", metadata={"help": "'sft' or 'pretrain' attention rules"})
    cls_reads_response_window: bool = field(default=True, metadata={"help": "train slot B over response windows"})
    window_max_length: int = field(default=21, metadata={"help": "longest slot-B window (r2 + r3 + 1)"})
    window_dead_fraction: float = field(default=0.5, metadata={"help": "fraction of examples with a dead slot B"})
    balance_classes: bool = field(default=True, metadata={"help": "oversample the minority label"})
    max_length: int = field(default=512, metadata={"help": "longest tokenised example (response is cut first)"})
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of all weights"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "default: all linear layers"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "'sdpa' or 'eager' (masks are 4-D)"})
    final_dir: str | None = field(default=None, metadata={"help": "where the final model goes (default output_dir/final)"})
    model_dtype: str | None = field(default=None, metadata={
        "help": "load the weights in 'float32' or 'bfloat16' (pure bf16: weights, gradients and AdamW moments "
                "in bf16); default: as stored"})
    model_geometry_file: str | None = field(default=None, metadata={
        "help": "a config.json the dry run sizes when model_name_or_path is not on this machine"})
    chat_template_file: str | None = field(default=None, metadata={
        "help": "a Jinja chat template to train (and save) the model with, replacing the tokenizer's"})
    lr_decay_per_epoch: float = field(default=1.0, metadata={
        "help": "multiply the scheduled learning rate by this once per epoch (llama-recipes' StepLR, γ=0.85)"})

    def __post_init__(self):
        # Trainer defaults that do not fit this data: our batches carry mask descriptors.
        self.remove_unused_columns = False
        if self.report_to in (None, "all", ["all"]):
            self.report_to = "none"
        if isinstance(self.fsdp, str) and self.fsdp.lower() in ("true", "false"):
            # YAML / `--fsdp true` arrive as text; transformers reads any other string as the
            # deprecated list of FSDP options.
            self.fsdp = True if self.fsdp.lower() == "true" else None
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: {self.objective!r} is not one of {OBJECTIVES}")
        if self.mask_mode not in ("sft", "pretrain"):
            raise ValueError(f"mask_mode: {self.mask_mode!r} is not 'sft' or 'pretrain'")
        if self.model_dtype not in MODEL_DTYPES:
            raise ValueError(f"model_dtype: {self.model_dtype!r} is not one of {MODEL_DTYPES}")
        if not 0 < self.lr_decay_per_epoch <= 1:
            raise ValueError(f"lr_decay_per_epoch: must be in (0, 1], got {self.lr_decay_per_epoch}")
        if self.cls_loss_weight < 0:
            raise ValueError(f"cls_loss_weight: must be ≥ 0, got {self.cls_loss_weight}")
        if self.data_file_style not in STYLES:
            raise ValueError(f"data_file_style: {self.data_file_style!r} is not one of {', '.join(STYLES)}")
        column_renames(self.data_file_columns)  # a malformed entry fails here, before the model loads

    @property
    def data_file_column_map(self) -> dict[str, str]:
        return column_renames(self.data_file_columns)

    @property
    def encoded_cache_root(self) -> Path:
        return Path(self.encoded_cache_dir or Path(self.output_dir) / ENCODED_CACHE_DIR)

    @property
    def with_cls(self) -> bool:
        return self.objective == "cls"

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.model_dtype) if self.model_dtype else None


def column_renames(entries: list[str] | None) -> dict[str, str]:
    """"field=column" entries (`data_file_columns`) as {field: column}."""
    renames = {}
    for entry in entries or ():
        name, sep, column = entry.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise ValueError(f"data_file_columns: {entry!r} is not field=column")
        renames[name.strip()] = column.strip()
    return renames
