"""Rebuild docs/viewer_diff.png: the viewer page of tutorial 1's "Seeing a circuit" section (zoo:llama before and
after 20 GRPO steps, EAP-IG scores), opened in headless Chromium through tests/browser.py.

    PYTHONPATH=. .venv/bin/python docs/viewer_screenshot.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from circuitdyn import attribute, view
from circuitdyn.graph import Graph
from circuitdyn.models import clone_model, load_model
from circuitdyn.tasks import Addition, tokenize_pairs
from circuitdyn.train import GRPOConfig, train
from tests.browser import Browser, find_chromium

OUT = Path(__file__).with_name("viewer_diff.png")


def main() -> None:
    model = load_model("zoo:llama")
    data = tokenize_pairs(model.tokenizer, Addition().examples(16, seed=0))
    graph = Graph.from_model(model, "head")
    tuned = clone_model(model)
    train(tuned, GRPOConfig(max_steps=20, eval_steps=0, per_device_train_batch_size=32, num_generations=8))
    before = attribute(model, graph, data, "logit_diff", method="eap-ig-inputs", steps=8, per_example=True)
    after = attribute(tuned, graph, data, "logit_diff", method="eap-ig-inputs", steps=8, per_example=True)
    found = find_chromium()
    if found is None:
        raise SystemExit("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    with tempfile.TemporaryDirectory() as tmp:
        page = view(before, after, labels=("base", "grpo"), out=Path(tmp) / "grpo_vs_base.html", top=40)
        browser = Browser(*found)
        try:
            browser.open(page)
            OUT.write_bytes(browser.screenshot())
        finally:
            browser.close()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
