"""The memory attribute() needs for one example of a model that is not loaded, from its configuration alone.

What attribution keeps grows linearly in the number of blocks and (with memory-efficient attention) in the
number of tokens. It is measured the way attribute() measures it (the tensors autograd saves, with the
destination reader's hooks on), on copies of the model's configuration cut to one and two blocks, with
random weights (nothing is read from disk), at two short lengths; the per-block and the fixed
part are then extrapolated to the model's depth and the length asked, and the activation-difference
buffers and destination gradients of the full graph are added (engine.peak_estimate).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitdyn.attribution.destinations import QKVGradients, destination_reader
from circuitdyn.attribution.engine import frozen_parameters, peak_estimate
from circuitdyn.attribution.kept import saved_activation_bytes
from circuitdyn.graph import Graph
from circuitdyn.models.attention import efficient_attention
from circuitdyn.models.zoo import char_tokenizer

PROBE_TOKENS = (64, 128)  # at most; both within the model's context


@dataclass(frozen=True)
class ExampleEstimate:
    """Bytes for one example of `tokens` tokens: everything kept, and with the blocks recomputed."""

    granularity: str
    tokens: int
    kept: int
    recomputed: int


def cut_bridge(config: Any, n_layers: int, dtype: torch.dtype) -> Any:
    """A bridge of `config`'s architecture cut to `n_layers` blocks, with its own random initialisation (never
    loaded from disk): what it keeps for a backward has the full model's per-block shapes."""
    import transformers as tf
    from transformer_lens.model_bridge import TransformerBridge

    fields = {**config.to_dict(), "num_hidden_layers": n_layers}
    if isinstance(fields.get("layer_types"), list):  # per-block attention kinds (Gemma3): the first n_layers
        fields["layer_types"] = fields["layer_types"][:n_layers]
    config = config.__class__.from_dict(fields)
    torch.manual_seed(0)  # the architecture's own initialisation: weights that carry a signal, buffers set
    model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    with tempfile.TemporaryDirectory(prefix="circuitdyn-shape-") as folder:
        config.save_pretrained(folder)
        char_tokenizer().save_pretrained(folder)  # ids are drawn, never tokenized: any tokenizer does
        bridge = TransformerBridge.boot_transformers(folder, hf_model=model, dtype=dtype, device="cpu")
    return bridge.eval()


def kept_bytes(bridge: Any, granularity: str, tokens: int) -> tuple[int, Graph]:
    """What attribute() measures for one example of `tokens` tokens: the activations autograd keeps, with the
    hooks its destination reader switches on, plus what the reader keeps per token; and the graph."""
    graph = Graph.from_model(bridge, granularity)
    ids = torch.full((1, tokens), 3, dtype=torch.long)
    reader = destination_reader(bridge, graph, QKVGradients.AUTO, patches_destinations=False)
    with graph.enable_hooks(bridge, split_qkv=not reader.projected), frozen_parameters(bridge), \
            efficient_attention(bridge):
        kept = saved_activation_bytes(bridge, graph, ids, torch.ones_like(ids, dtype=torch.bool))
    return kept + reader.kept_bytes_per_token() * tokens, graph


def example_estimates(config_folder: str | Path, granularities: tuple[str, ...], lengths: tuple[int, ...],
                      dtype: torch.dtype = torch.bfloat16) -> list[ExampleEstimate]:
    """For each graph and length: the peak bytes one example needs (everything kept, and recomputed block by
    block) on the model whose Hugging Face configuration is in `config_folder`."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(config_folder))
    depth, width = int(config.num_hidden_layers), int(config.hidden_size)
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1 << 20
    long = min(PROBE_TOKENS[1], int(context))  # lengths a model with learned positions can embed
    short = long // 2
    measured: dict[tuple[str, int, int], int] = {}
    spec: dict[str, Graph] = {}
    for n in (1, 2):
        bridge = cut_bridge(config, n, dtype)
        for g in granularities:
            for t in (short, long):
                measured[g, n, t], graph = kept_bytes(bridge, g, t)
                spec.setdefault(g, graph)
        del bridge
    out = []
    for g in granularities:
        per_block = (measured[g, 2, long] - measured[g, 1, long] - measured[g, 2, short] + measured[g, 1, short]) / (
            long - short)
        fixed = (measured[g, 1, long] - measured[g, 1, short]) / (long - short) - per_block
        full = Graph(dataclasses.replace(spec[g].spec, n_layers=depth))
        element = torch.finfo(dtype).bits // 8
        for tokens in lengths:
            kept = int((per_block * depth + fixed) * tokens)
            # recomputed: the blocks' inputs and one block's own activations kept
            again = int((per_block + fixed) * tokens) + depth * tokens * width * element
            out.append(ExampleEstimate(g, tokens, peak_estimate(full, 1, tokens, 1.0, max(kept, 0)),
                                       peak_estimate(full, 1, tokens, 1.0, max(again, 0))))
    return out
