"""Size a training job before it starts: parameters, memory per GPU per strategy, tokens per step.

`safesignal train --dry-run` builds the model on the meta device (no weights are read or
allocated, so a 7B model takes seconds on a laptop), applies LoRA when the recipe asks for it,
and estimates the memory one GPU needs under each distributed strategy:

- **weights, gradients, optimiser state** from the parameter counts and the precision:
  `fp32` 4 / 4 / 8 bytes per trainable parameter (AdamW's two moments), pure `bf16` (the
  weights loaded in bf16, `model_dtype: bfloat16`, what the paper's llama-recipes run calls
  "pure bf16") 2 / 2 / 4, `amp` (fp32 weights under bf16 autocast, `bf16: true`) 4 / 4 / 8.
  Frozen weights (LoRA's base) cost their storage only.
- **sharding**: `ddp` keeps everything on every GPU; `zero2` shards gradients and optimiser
  state; `fsdp` (full shard) and `zero3` shard all three and gather one decoder layer at a
  time (counted twice: the next one is prefetched).
- **activations**: the tensors autograd saves for the backward pass. Per token and decoder
  layer, counted from what transformers' Llama / Mistral / Qwen2 layer keeps under sdpa (two
  RMSNorms, q/k/v/out and the softmax statistics, four MLP tensors):
  `20h + 4kv + 8i + 4·heads + 8` bytes in bf16 and `32h + 8kv + 16i + 4·heads + 8` in fp32
  (h hidden, kv the key/value width, i the MLP width). Under CPU autocast the saved tensors
  measured 1.22-1.26x the bf16 figure on three geometries: `amp` uses 1.25x (CUDA autocast
  caches its casts differently; treat it as the roughest of the three). Outside the layers:
  the final norm, the 4-D `[CLS]` mask (one row of `length` entries per token) and the fp32
  log-softmax of the logits (`4·vocab` bytes per token, every token counted as supervised, an
  upper bound). Gradient checkpointing keeps each layer's input only. The peak adds what the
  backward pass holds at once on top: the logits' gradient and, checkpointed, one recomputed
  layer. The saved part is checked against the tensors autograd saves on this CPU, fp32 and
  bf16, with and without checkpointing (tests/test_sizing.py: within 5%, 10% checkpointed);
  GPU attention kernels save the same q/k/v/out/statistics.
- **fits** when the total is within 90% of the GPU's memory: the rest is left for what is not
  modelled (the CUDA context, allocator fragmentation, communication buffers).

Tokens per optimiser step are `batch × accumulation × GPUs × max_length`, an upper bound
(batches are padded to their longest example, not to `max_length`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .config import SafetyTrainingConfig

GiB = 2**30
STRATEGIES = ("ddp", "zero2", "fsdp", "zero3")
FIT_FRACTION = 0.9
# (weights, gradients, optimiser state) bytes per trainable parameter, and the bytes of one
# activation / saved element, by precision.
_STATE_BYTES = {"fp32": (4, 4, 8), "bf16": (2, 2, 4), "amp": (4, 4, 8)}
_ACTIVATION_BYTES = {"fp32": 4, "bf16": 2, "amp": 2}
AMP_ACTIVATION_FACTOR = 1.25


@dataclass(frozen=True)
class Geometry:
    """What the memory estimate needs from a decoder-only architecture config."""

    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> Geometry:
        text = config.get_text_config()
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(text.model_type, text.num_hidden_layers, text.hidden_size, text.intermediate_size, heads,
                   getattr(text, "num_key_value_heads", None) or heads, head_dim, text.vocab_size)

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


def precision_of(config: SafetyTrainingConfig) -> str:
    """`bf16` (pure bf16 weights), `amp` (fp32 weights, bf16 autocast) or `fp32`."""
    if config.model_dtype == "bfloat16":
        return "bf16"
    return "amp" if config.bf16 else "fp32"


def layer_activation_bytes(geometry: Geometry, precision: str) -> float:
    """Bytes saved for backward per token by one decoder layer (see the module docstring)."""
    g = geometry
    if precision == "fp32":
        return 32 * g.hidden + 8 * g.kv_width + 16 * g.intermediate + 4 * g.heads + 8
    bf16 = 20 * g.hidden + 4 * g.kv_width + 8 * g.intermediate + 4 * g.heads + 8
    return bf16 * (AMP_ACTIVATION_FACTOR if precision == "amp" else 1.0)


def saved_activation_bytes(geometry: Geometry, precision: str, batch: int, length: int, checkpointing: bool) -> float:
    """What autograd keeps from the forward pass of one micro-batch for the backward pass."""
    tokens = batch * length
    element = _ACTIVATION_BYTES[precision]
    residual = 4 if precision != "bf16" else 2  # the residual stream stays fp32 under autocast
    if checkpointing:  # each layer keeps only its input
        layers = geometry.layers * residual * geometry.hidden
    else:
        layers = geometry.layers * layer_activation_bytes(geometry, precision)
    final_norm = (residual + 2 * element) * geometry.hidden
    mask = length * (4 if precision != "bf16" else 2)
    logits = 4 * geometry.vocab  # the fp32 log-softmax the LM loss saves
    return tokens * (layers + final_norm + mask + logits)


def activation_bytes(geometry: Geometry, precision: str, batch: int, length: int, checkpointing: bool) -> float:
    """Peak activation memory of one micro-batch: what is saved, plus what the backward pass
    holds at once on top of it (the fp32 logits' gradient, and under checkpointing one
    recomputed layer)."""
    tokens = batch * length
    transient = 4 * geometry.vocab + (layer_activation_bytes(geometry, precision) if checkpointing else 0)
    return saved_activation_bytes(geometry, precision, batch, length, checkpointing) + tokens * transient


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    trainable: int
    safesignal: int  # the [CLS] row and the head
    largest_layer: int  # one decoder layer: what FSDP / ZeRO-3 gather at a time


def count_parameters(config: SafetyTrainingConfig, hf_config) -> ParameterCounts:
    """Build the model on the meta device (LoRA applied as the recipe asks) and count."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    layers = model.get_decoder().layers
    largest = max(sum(p.numel() for p in layer.parameters()) for layer in layers)
    hidden = hf_config.get_text_config().hidden_size
    safesignal = 2 * hidden + 1 if config.with_cls else 0
    if config.use_lora:
        from peft import get_peft_model

        from ..model import lora_config

        model = get_peft_model(model, lora_config(config.lora_r, config.lora_alpha, config.lora_dropout,
                                                  config.lora_target_modules))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        largest = max(sum(p.numel() for p in layer.parameters()) for layer in model.get_base_model().get_decoder().layers)
    else:
        trainable = sum(p.numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    return ParameterCounts(total + safesignal, trainable + safesignal, safesignal, largest)


@dataclass(frozen=True)
class StrategyMemory:
    strategy: str
    weights: float
    gradients: float
    optimizer: float
    activations: float
    activations_checkpointed: float

    def total(self, checkpointing: bool) -> float:
        return self.weights + self.gradients + self.optimizer + (
            self.activations_checkpointed if checkpointing else self.activations)


def strategy_memory(counts: ParameterCounts, geometry: Geometry, precision: str, num_gpus: int,
                    batch: int, length: int) -> list[StrategyMemory]:
    weight_b, grad_b, optim_b = _STATE_BYTES[precision]
    frozen_b = 2 if precision == "bf16" else 4
    frozen = counts.total - counts.trainable
    weights = counts.trainable * weight_b + frozen * frozen_b
    gradients, optimizer = counts.trainable * grad_b, counts.trainable * optim_b
    activations = activation_bytes(geometry, precision, batch, length, checkpointing=False)
    checkpointed = activation_bytes(geometry, precision, batch, length, checkpointing=True)
    gathered = 2 * counts.largest_layer * frozen_b
    shares = {  # the fraction of (weights, gradients, optimiser) one GPU holds
        "ddp": (1, 1, 1),
        "zero2": (1, 1 / num_gpus, 1 / num_gpus),
        "fsdp": (1 / num_gpus, 1 / num_gpus, 1 / num_gpus),
        "zero3": (1 / num_gpus, 1 / num_gpus, 1 / num_gpus),
    }
    rows = []
    for strategy in STRATEGIES:
        w, g, o = shares[strategy]
        held = weights * w + (gathered if strategy in ("fsdp", "zero3") and num_gpus > 1 else 0)
        rows.append(StrategyMemory(strategy, held, gradients * g, optimizer * o, activations, checkpointed))
    return rows


@dataclass(frozen=True)
class DryRun:
    """Everything `--dry-run` prints, in bytes and counts (`as_dict` for JSON)."""

    geometry: Geometry
    geometry_source: str
    counts: ParameterCounts
    precision: str
    num_gpus: int
    gpu_memory_gb: float
    batch: int
    accumulation: int
    length: int
    checkpointing: bool  # what the config asks for (both are printed)
    strategies: list[StrategyMemory]
    not_ready: list[str]  # what would stop `safesignal train` with this config on this machine

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.accumulation * self.num_gpus * self.length

    def fits(self, row: StrategyMemory, checkpointing: bool) -> bool:
        return row.total(checkpointing) <= FIT_FRACTION * self.gpu_memory_gb * GiB

    def as_dict(self) -> dict:
        return {
            "geometry": asdict(self.geometry), "geometry_source": self.geometry_source,
            "parameters": asdict(self.counts), "precision": self.precision, "num_gpus": self.num_gpus,
            "gpu_memory_gb": self.gpu_memory_gb, "tokens_per_step": self.tokens_per_step,
            "activation_checkpointing": self.checkpointing, "not_ready": self.not_ready,
            "strategies": {
                row.strategy: {**{k: v for k, v in asdict(row).items() if k != "strategy"},
                               "total": row.total(False), "total_checkpointed": row.total(True),
                               "fits": self.fits(row, False), "fits_checkpointed": self.fits(row, True)}
                for row in self.strategies
            },
        }


def dry_run(config: SafetyTrainingConfig, num_gpus: int = 1, gpu_memory_gb: float = 80.0) -> DryRun:
    """Size `config`'s job on `num_gpus` GPUs of `gpu_memory_gb` each, without loading a weight."""
    from ..registry import base_config

    if num_gpus < 1:
        raise ValueError(f"num_gpus: must be ≥ 1, got {num_gpus}")
    if gpu_memory_gb <= 0:
        raise ValueError(f"gpu_memory_gb: must be > 0, got {gpu_memory_gb}")
    hf_config, source = _architecture(config, base_config)
    geometry = Geometry.from_config(hf_config)
    counts = count_parameters(config, hf_config)
    precision = precision_of(config)
    batch, length = config.per_device_train_batch_size, config.max_length
    rows = strategy_memory(counts, geometry, precision, num_gpus, batch, length)
    return DryRun(geometry, source, counts, precision, num_gpus, gpu_memory_gb, batch,
                  config.gradient_accumulation_steps, length, bool(config.activation_checkpointing), rows,
                  missing_inputs(config, source))


def missing_inputs(config: SafetyTrainingConfig, geometry_source: str) -> list[str]:
    """The files a training run would read that are not on this machine (sizing needs none of them)."""
    missing = []
    if geometry_source != config.model_name_or_path:
        missing.append(f"model_name_or_path: {config.model_name_or_path} is not here (sized from {geometry_source})")
    for name in ("train_file", "eval_file", "chat_template_file"):
        value = getattr(config, name)
        if value and not Path(value).exists():
            missing.append(f"{name}: {value} does not exist")
    if not config.train_file:
        missing.append("train_file: not set")
    return missing


def _architecture(config: SafetyTrainingConfig, base_config):
    """The model's config.json when it is on this machine, else the recipe's `model_geometry_file`."""
    try:
        return base_config(config.model_name_or_path), config.model_name_or_path
    except FileNotFoundError as missing:
        if not config.model_geometry_file:
            raise FileNotFoundError(
                f"model_name_or_path: {missing}; to size a job for a model that is not on this machine, "
                "set model_geometry_file to its config.json (configs/paper/geometry/ has the paper's models)"
            ) from None
    from transformers import AutoConfig

    path = config.model_geometry_file
    try:
        return AutoConfig.from_pretrained(path), path
    except (OSError, ValueError) as err:
        raise ValueError(f"model_geometry_file: {path}: not a readable Hugging Face config.json ({err})") from None


def format_dry_run(run: DryRun) -> str:
    """The human-readable report `safesignal train --dry-run` prints."""
    g, c = run.geometry, run.counts
    mode = "LoRA" if c.trainable < c.total - c.safesignal else "full fine-tuning"
    precision = {"bf16": "pure bf16 (weights, gradients and AdamW moments in bf16)",
                 "amp": "amp (fp32 weights and AdamW moments, bf16 autocast)",
                 "fp32": "fp32"}[run.precision]
    lines = [
        f"model: {g.model_type}, {g.layers} layers, hidden {g.hidden}, MLP {g.intermediate}, "
        f"heads {g.heads} (kv {g.kv_heads}), vocab {g.vocab}   [{run.geometry_source}]",
        f"parameters: {c.total:,} total, {c.trainable:,} trainable ({mode}); [CLS] row + head {c.safesignal:,}",
        f"precision: {precision}; activation checkpointing {'on' if run.checkpointing else 'off'} in this config",
        f"batch: {run.batch} per GPU x {run.accumulation} accumulation x {run.num_gpus} GPU(s) "
        f"= {run.batch * run.accumulation * run.num_gpus} sequences of <= {run.length} tokens: "
        f"<= {run.tokens_per_step:,} tokens per optimiser step",
        f"memory per GPU (GiB) on {run.num_gpus} x {run.gpu_memory_gb:g} GB; fits = total <= "
        f"{FIT_FRACTION:.0%} of it:",
        f"  {'strategy':<9}{'weights':>9}{'grads':>9}{'optim':>9}{'activ.':>9}{'total':>9}  fits"
        f"   | checkpointing: {'activ.':>8}{'total':>9}  fits",
    ]
    for row in run.strategies:
        lines.append(
            f"  {row.strategy:<9}{row.weights / GiB:9.2f}{row.gradients / GiB:9.2f}{row.optimizer / GiB:9.2f}"
            f"{row.activations / GiB:9.2f}{row.total(False) / GiB:9.2f}  {_yes(run.fits(row, False)):<4}"
            f"  |                {row.activations_checkpointed / GiB:8.2f}{row.total(True) / GiB:9.2f}"
            f"  {_yes(run.fits(row, True))}"
        )
    if run.not_ready:
        lines.append("not ready to train here (sizing needed none of these):")
        lines += [f"  {problem}" for problem in run.not_ready]
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
