"""Named prompt templates: the strings the RL-circuitry paper prompted its models with, and their stops.

The paper generated with vLLM from plain-text prompts (no chat template applied by the tokenizer): the
question is put into the model family's template, the surrounding spaces are stripped, and the text is
tokenized with the tokenizer's special tokens (a BOS where the tokenizer adds one). Generation stops at the
end-of-sequence token and at "</s>", "<|im_end|>" and "<|endoftext|>"; a stop string that is one token of
the vocabulary stops generation as that token.

    deepseek-math    DeepSeek-Math, DeepSeek-R1-Distill-Qwen and AceReason-Nemotron
    mistral          Mistral-7B-SFT and Math-Shepherd-Mistral-7B-RL
    qwen25-math-cot  Qwen2.5-7B-SFT and Qwen2.5-7B-DPO
    plain            the question alone
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STOP_STRINGS = ("</s>", "<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with `{input}` where the question goes (`{{`/`}}` are literal braces)."""

    name: str
    text: str
    stops: tuple[str, ...] = STOP_STRINGS

    def render(self, question: str) -> str:
        return self.text.format(input=question).strip(" ")

    def encode(self, tokenizer: Any, question: str) -> list[int]:
        return [int(i) for i in tokenizer(self.render(question), add_special_tokens=True)["input_ids"]]

    def stop_ids(self, tokenizer: Any) -> set[int]:
        """The eos token and every stop string that is a single token of `tokenizer`."""
        ids = {tokenizer.eos_token_id} - {None}
        vocab = tokenizer.get_vocab()
        ids |= {int(vocab[s]) for s in self.stops if s in vocab}
        return ids


TEMPLATES = {t.name: t for t in (
    PromptTemplate("plain", "{input}"),
    PromptTemplate("deepseek-math", "User: {input}\nPlease reason step by step, and put your final answer within "
                                    "\\boxed{{}}.\n\nAssistant:"),
    PromptTemplate("mistral", "[INST] {input}[/INST]"),
    PromptTemplate("qwen25-math-cot", "<|im_start|>system\nPlease reason step by step, and put your final answer "
                                      "within \\boxed{{}}.<|im_end|>\n<|im_start|>user\n{input}<|im_end|>\n"
                                      "<|im_start|>assistant\n"),
)}


def template_named(name: str) -> PromptTemplate:
    """The template called `name`; ValueError naming the choices when there is none."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; choose one of {sorted(TEMPLATES)} (or leave template "
                         "unset to use the tokenizer's chat template)")
    return TEMPLATES[name]
