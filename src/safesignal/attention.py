"""A registered attention function for `[CLS]` masks on the CPU.

transformers' `sdpa` path copies the key/value heads (`repeat_kv`) for grouped-query models
whenever a mask is given, because the fast CUDA kernels cannot combine a mask with
`enable_gqa`. On the CPU, PyTorch's flash kernel does take both, so the copy (and its backward
reduction) is pure overhead for our 4-D masks: measured here it was most of the training-step
overhead of `[CLS]` over plain SFT at length 512. Everything else (no mask, CUDA, single-token
decode) goes to transformers' own `sdpa` unchanged.

Registered as `safesignal_sdpa` through `AttentionInterface` (plus the sdpa mask builder under
the same name); no modeling file is touched, and the name is never written to a saved config.
"""

from __future__ import annotations

import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "safesignal_sdpa"


def masked_gqa_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    groups = getattr(module, "num_key_value_groups", 1)
    direct = (
        attention_mask is not None
        and groups > 1
        and query.device.type == "cpu"
        and not kwargs.get("output_attentions", False)
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
    )
    if not direct:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, masked_gqa_sdpa)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
