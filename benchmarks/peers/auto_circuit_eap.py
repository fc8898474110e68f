"""auto-circuit's EAP on a GPT-2 folder, run in the peer environment (benchmarks/peers/setup.sh).

Reads the model folder and the token file bench_peers.py wrote, loads the weights into a transformer-lens
2.x HookedTransformer (no weight processing, so it computes what the Hugging Face model computes), and
times auto-circuit 1.0.1's edge attribution patching (mask gradients at mask 0, resample ablation from the
corrupt prompts, logit difference at the last position) after one warm-up call. Writes JSON: the scores
under circuitdyn's edge names, the seconds of each timed call, and the versions.

    .venv-peers/bin/python benchmarks/peers/auto_circuit_eap.py --model DIR --data FILE --out JSON
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def hooked(folder: str):  # type: ignore[no-untyped-def]
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, n_ctx=c.n_positions, d_vocab=c.vocab_size, act_fn="gelu_new",
        normalization_type="LN", eps=c.layer_norm_epsilon, positional_embedding_type="standard",
        default_prepend_bos=False, device="cpu", use_attn_result=True, use_split_qkv_input=True,
        use_hook_mlp_in=True)
    model = HookedTransformer(cfg)
    missing = model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False).missing_keys
    assert all(k.endswith(("IGNORE", "mask", "b_U")) for k in missing), missing  # buffers, GPT-2's absent bias
    with torch.no_grad():
        model.unembed.b_U.zero_()
    return model.eval()


def ours(name: str) -> str:
    """auto-circuit's node name as circuitdyn names it."""
    if name == "Resid Start":
        return "input"
    if name == "Resid End":
        return "logits"
    if name.startswith("MLP "):
        return f"m{name[4:]}"
    parts = name[1:].split(".")  # A{layer}.{head}[.{Q|K|V}]
    head = f"a{parts[0]}.h{parts[1]}"
    return head if len(parts) == 2 else f"{head}<{parts[2].lower()}>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from importlib.metadata import version

    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.types import AblationType
    from auto_circuit.utils.graph_utils import patchable_model

    data = torch.load(args.data)
    model = patchable_model(hooked(args.model), factorized=True, slice_output="last_seq", separate_qkv=True,
                            device=torch.device("cpu"))
    n = data["clean"].shape[0]
    dataset = PromptDataset(data["clean"], data["corrupt"], [a[None] for a in data["answers"]],
                            [f[None] for f in data["foils"]])
    loader = PromptDataLoader(dataset, seq_len=None, diverge_idx=0, batch_size=n, shuffle=False)

    def run():  # type: ignore[no-untyped-def]
        return mask_gradient_prune_scores(model, loader, None, grad_function="logit", answer_function="avg_diff",
                                          mask_val=0.0, ablation_type=AblationType.RESAMPLE, clean_corrupt="corrupt")

    scores = run()  # warm-up
    seconds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        scores = run()
        seconds.append(time.perf_counter() - t0)
    edges = {f"{ours(e.src.name)}->{ours(e.dest.name)}": float(e.prune_score(scores)) for e in model.edges}
    json.dump({"seconds": seconds, "scores": edges, "threads": torch.get_num_threads(),
               "versions": {p: version(p) for p in ("auto-circuit", "transformer-lens", "torch")}},
              open(args.out, "w"))


if __name__ == "__main__":
    main()
