"""The model zoo: tiny models of each family, pre-trained deterministically on `addition`.

Each zoo model is a real Hugging Face architecture (GPT-2, GPT-NeoX with parallel attention+MLP, Llama
and Qwen2 with grouped-query attention, Gemma3 with post-norms) at ~0.1 M parameters, with a character
tokenizer. Pre-training stops as soon as held-out greedy accuracy enters the target band, so RL has room
to improve. Weights ship with the package (`circuitdyn/models/zoo_weights/`, made by `python -m circuitdyn.models.zoo
--ship`); when the recipe changes, the key changes and the model is retrained into the user cache.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import string
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuitdyn.models.files import cache_root, save_model_folder
from circuitdyn.tasks.addition import Addition
from circuitdyn.tasks.base import TaskExample

ZOO_VERSION = 1
SHIPPED_DIR = Path(__file__).with_name("zoo_weights")
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHARS = string.digits + "+=-" + " " + string.ascii_letters + ".,;:!?'\"()"


def char_tokenizer() -> Any:
    """A character-level fast tokenizer (one token per character), saveable with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + tuple(CHARS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


@dataclass(frozen=True)
class ZooSpec:
    """Shape of one zoo model and its pre-training recipe."""

    family: str
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4
    d_mlp: int = 256
    n_ctx: int = 32
    seed: int = 0
    lr: float = 2e-3
    batch_size: int = 128
    max_steps: int = 4000
    eval_every: int = 25
    eval_size: int = 400
    target_accuracy: float = 0.7  # stop once held-out greedy accuracy reaches this (band 0.5-0.9)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown zoo family {self.family!r}; choose one of {sorted(FAMILIES)}")
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError("d_model must divide by n_heads and n_heads by n_kv_heads")
        if not 0.0 < self.target_accuracy < 1.0:
            raise ValueError(f"target_accuracy must be in (0, 1), got {self.target_accuracy}")

    def key(self) -> str:
        blob = json.dumps({"spec": asdict(self), "version": ZOO_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def hf_config(self, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> Any:
        import transformers as tf

        ids: dict[str, Any] = dict(vocab_size=vocab_size, pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id)
        d, L, H, K, M, T = self.d_model, self.n_layers, self.n_heads, self.n_kv_heads, self.d_mlp, self.n_ctx
        if self.family == "gpt2":
            return tf.GPT2Config(n_embd=d, n_layer=L, n_head=H, n_inner=M, n_positions=T, **ids)
        common: dict[str, Any] = dict(hidden_size=d, num_hidden_layers=L, num_attention_heads=H, intermediate_size=M,
                      max_position_embeddings=T, **ids)
        if self.family == "neox":
            # rotary_pct: the legacy spelling GPTNeoXConfig still reads (half of each head is rotated)
            return tf.GPTNeoXConfig(use_parallel_residual=True, rotary_pct=0.5, **common)  # type: ignore[call-arg]
        if self.family == "llama":
            return tf.LlamaConfig(num_key_value_heads=K, **common)
        if self.family == "qwen2":
            return tf.Qwen2Config(num_key_value_heads=K, **common)
        return tf.Gemma3TextConfig(num_key_value_heads=K, head_dim=d // H, sliding_window=T, **common)


FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "neox": {},
    "llama": {"n_kv_heads": 2},
    "qwen2": {"n_kv_heads": 2},
    "gemma3": {"n_kv_heads": 2},
}


def zoo_spec(family: str) -> ZooSpec:
    if family not in FAMILIES:
        raise ValueError(f"unknown zoo model {family!r}; choose one of {sorted(FAMILIES)}")
    return ZooSpec(family=family, **FAMILIES[family])


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Reductions in one thread so that training is bit-identical whatever the core count."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _encode_training(tokenizer: Any, examples: list[TaskExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a loss mask that covers the answer and the eos token only."""
    rows, masks = [], []
    for ex in examples:
        prompt = tokenizer(ex.clean, add_special_tokens=False)["input_ids"]
        target = tokenizer(ex.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt + target)
        masks.append([0] * len(prompt) + [1] * len(target))
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.bool)
    return ids, mask


@torch.no_grad()
def greedy_accuracy(model: Any, tokenizer: Any, examples: list[TaskExample], *, max_new_tokens: int = 4) -> float:
    """Exact-match accuracy of greedy completions (prompts all have the same length)."""
    task = Addition()
    ids = torch.tensor([tokenizer(ex.clean, add_special_tokens=False)["input_ids"] for ex in examples])
    for _ in range(max_new_tokens):
        nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    texts = tokenizer.batch_decode(ids[:, -max_new_tokens:], skip_special_tokens=False)
    return sum(task.reward(ex, t) for ex, t in zip(examples, texts)) / len(examples)


def pretrain(spec: ZooSpec, *, progress: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """Build and pre-train one zoo model. Deterministic for a given spec on CPU."""
    from transformers import AutoModelForCausalLM

    tokenizer = char_tokenizer()
    task = Addition()
    with _single_thread():
        torch.manual_seed(spec.seed)
        config = spec.hf_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
        model = AutoModelForCausalLM.from_config(config)
        model.train()
        train = task.examples(8192, seed=spec.seed, split="train")
        held_out = task.examples(spec.eval_size, seed=spec.seed + 1, split="test")
        ids, mask = _encode_training(tokenizer, train)
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
        gen = torch.Generator().manual_seed(spec.seed)
        t0, accuracy, step, curve = time.perf_counter(), 0.0, 0, []
        for step in range(1, spec.max_steps + 1):
            rows = torch.randint(0, len(ids), (spec.batch_size,), generator=gen)
            x, m = ids[rows], mask[rows]
            logits = model(x).logits[:, :-1]  # right padding: causal attention never lets loss positions see it
            target = x[:, 1:].masked_fill(~m[:, 1:], -100)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % spec.eval_every == 0:
                model.eval()
                accuracy = greedy_accuracy(model, tokenizer, held_out)
                model.train()
                curve.append((step, round(loss.item(), 4), accuracy))
                if progress:
                    print(f"[zoo:{spec.family}] step {step} loss {loss.item():.3f} held-out acc {accuracy:.3f}")
                if accuracy >= spec.target_accuracy:
                    break
        model.eval()
    info = {
        "family": spec.family, "key": spec.key(), "spec": asdict(spec), "steps": step,
        "held_out_accuracy": accuracy, "train_seconds": round(time.perf_counter() - t0, 2),
        "n_params": sum(p.numel() for p in model.parameters()), "curve": curve, "zoo_version": ZOO_VERSION,
    }
    return model, tokenizer, info


def save_zoo_model(model: Any, tokenizer: Any, info: dict[str, Any], folder: Path) -> Path:
    return save_model_folder(model, tokenizer, folder, extra_files={"zoo.json": json.dumps(info, indent=1)})


def read_info(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "zoo.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def zoo_path(family: str, *, progress: bool = False) -> Path:
    """Folder of the pre-trained zoo model: shipped weights when their key matches, else the user cache
    (training there on first use)."""
    spec = zoo_spec(family)
    shipped = SHIPPED_DIR / family
    info = read_info(shipped)
    if info is not None and info.get("key") == spec.key():
        return shipped
    cached = cache_root() / "zoo" / f"{family}-{spec.key()}"
    info = read_info(cached)
    if info is not None and info.get("key") == spec.key():
        return cached
    model, tokenizer, info = pretrain(spec, progress=progress)
    return save_zoo_model(model, tokenizer, info, cached)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pre-train the zoo models (and optionally ship them).")
    parser.add_argument("families", nargs="*", default=sorted(FAMILIES))
    parser.add_argument("--ship", action="store_true", help="write into circuitdyn/models/zoo_weights/")
    args = parser.parse_args(argv)
    for family in args.families:
        model, tokenizer, info = pretrain(zoo_spec(family), progress=True)
        folder = SHIPPED_DIR / family if args.ship else cache_root() / "zoo" / f"{family}-{info['key']}"
        save_zoo_model(model, tokenizer, info, folder)
        print(f"{family}: {info['n_params']} params, {info['steps']} steps, held-out accuracy "
              f"{info['held_out_accuracy']:.3f}, {info['train_seconds']} s -> {folder}")


if __name__ == "__main__":
    main()
