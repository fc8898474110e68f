"""Model files: where they are cached, how a Hugging Face folder is written, and how its tokenizer is read.

The lowest layer of model handling: the zoo, the real offline models and `load_model` all build on it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from circuitdyn.core.atomic import atomic_folder

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
#: beside a model whose tokenizer is a plain fast tokenizer (the zoo's and its exports): load it as such
PLAIN_TOKENIZER_MARKER = "circuitdyn_tokenizer.json"


def cache_root() -> Path:
    """The user cache: $CIRCUITDYN_CACHE, or ~/.cache/circuitdyn."""
    return Path(os.environ.get("CIRCUITDYN_CACHE", Path.home() / ".cache" / "circuitdyn"))


class ModelSpecError(ValueError):
    """A model spec that cannot be loaded: the message lists what would work."""


def check_tokenizer_files(folder: Path) -> None:
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise ModelSpecError(
            f"no tokenizer files in {folder} (looked for {', '.join(TOKENIZER_FILES)}). Without them "
            "transformers silently falls back to a GPT-2 tokenizer that does not match the model. "
            "Save the tokenizer beside the weights: tokenizer.save_pretrained(folder)"
        )


def check_round_trip(tokenizer: Any, source: str) -> None:
    probe = "When Mary and John went to the store, 23+58=81"
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if text.replace(" ", "") != probe.replace(" ", ""):
        raise ModelSpecError(
            f"the tokenizer of {source} does not round-trip text ({probe!r} -> {text!r}); it is probably not "
            "the tokenizer this model was trained with. Save the right tokenizer beside the model."
        )


def has_plain_tokenizer(folder: Path) -> bool:
    return (folder / PLAIN_TOKENIZER_MARKER).exists() or (folder / "zoo.json").exists()


def load_tokenizer(target: Path | str) -> Any:
    """The tokenizer saved with a model. Zoo folders (and folders exported from them, which carry
    PLAIN_TOKENIZER_MARKER) hold a plain fast tokenizer: load it as such, since AutoTokenizer would
    substitute the architecture's own class (Qwen2Tokenizer drops spaces)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if isinstance(target, Path) and has_plain_tokenizer(target):
        return PreTrainedTokenizerFast.from_pretrained(str(target))
    return AutoTokenizer.from_pretrained(str(target))


def is_plain_tokenizer(tokenizer: Any) -> bool:
    from transformers import PreTrainedTokenizerFast

    return type(tokenizer) is PreTrainedTokenizerFast


def save_model_folder(
    hf_model: Any, tokenizer: Any, folder: Path, *, extra_files: dict[str, str] | None = None
) -> Path:
    """Atomically write a Hugging Face model + tokenizer folder, so an interrupted save never leaves a
    folder that loads."""
    with atomic_folder(folder) as tmp:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return folder
