"""hannamw/EAP-IG's EAP and EAP-IG on a GPT-2 folder, run in the peer environment (benchmarks/peers/setup.sh).

Reads the model folder and the token file bench_peers.py wrote, loads the weights into a transformer-lens
2.x HookedTransformer as auto_circuit_eap.py does (no weight processing; attention results, split q/k/v
inputs and MLP inputs hooked, as EAP-IG requires), and times `eap.attribute.attribute` after one warm-up
call: method "EAP" (noising: corrupt - clean) or "EAP-IG-inputs" with `ig_steps`, aggregation "sum".

Two shims, neither inside the timed computation's arithmetic, both stated:
- EAP-IG tokenizes strings itself (`tokenize_plus`, with a BOS prepended); here its dataloader yields the
  token tensors bench_peers.py wrote, and `tokenize_plus` is replaced by one that returns them with a full
  attention mask, so both libraries score the same tokens.
- EAP-IG allocates its score matrix with `device='cuda'`; on a CPU machine that allocation is sent to the
  model's device.

The metric is the logit difference at the last position summed over the batch, so that EAP-IG's division by
the number of examples gives the mean over examples, as circuitdyn's score is. Writes JSON: the scores under
circuitdyn's edge names (EAP-IG's own names: circuitdyn uses them), the seconds of each timed call, and the
versions.

    .venv-peers/bin/python benchmarks/peers/eap_ig_eap.py --model DIR --data FILE --out JSON [--steps N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from auto_circuit_eap import hooked  # the same HookedTransformer for both peers


def shim_device(module: types.ModuleType, device: str) -> None:
    """Send EAP-IG's `torch.zeros(..., device='cuda')` to `device` (its module-level torch only)."""
    proxy = types.ModuleType("torch")
    proxy.__dict__.update(torch.__dict__)

    def zeros(*args, device_=device, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("device") == "cuda":
            kwargs["device"] = device_
        return torch.zeros(*args, **kwargs)
    proxy.zeros = zeros  # type: ignore[attr-defined]
    module.torch = proxy  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=0, help="EAP-IG-inputs steps (0: plain EAP)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from importlib.metadata import version

    import eap.attribute
    from eap.graph import Graph

    shim_device(eap.attribute, "cpu")
    data = torch.load(args.data)

    def given_tokens(model, tokens, max_length=None):  # type: ignore[no-untyped-def]
        mask = torch.ones_like(tokens)
        return tokens, mask, mask.sum(1), tokens.shape[1]
    eap.attribute.tokenize_plus = given_tokens
    model = hooked(args.model)
    answers, foils = data["answers"], data["foils"]

    def logit_diff(logits, clean_logits, input_lengths, label):  # type: ignore[no-untyped-def]
        last = logits[:, -1]
        rows = torch.arange(len(last))
        return (last[rows, answers] - last[rows, foils]).sum()
    loader = [(data["clean"], data["corrupt"], None)]
    method = "EAP-IG-inputs" if args.steps else "EAP"

    graph = Graph.from_model(model)  # built once, outside the timing (its scores are overwritten each call)

    def run() -> None:
        eap.attribute.attribute(model, graph, loader, logit_diff, method=method, intervention="patching",
                                aggregation="sum", ig_steps=args.steps or None, quiet=True)

    run()  # warm-up
    seconds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - t0)
    edges = {name: float(edge.score) for name, edge in graph.edges.items()}
    json.dump({"seconds": seconds, "scores": edges, "threads": torch.get_num_threads(),
               "versions": {p: version(p) for p in ("eap", "transformer-lens", "torch")}},
              open(args.out, "w"))


if __name__ == "__main__":
    main()
