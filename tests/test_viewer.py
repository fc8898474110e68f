"""The circuit viewer: what it lays out (pure data, checked against direct computations), that the page is one
self-contained file, and, in headless Chromium, that it draws as many edges as the slider asks with no console
error and a picture that is not blank."""

import io
import json
import re

import numpy as np
import pytest
import torch

from circuitdyn.analysis.comparison import ComparisonError, paired_delta
from circuitdyn.analysis.metrics import circuit_metrics, edge_vector, sample_diversity
from circuitdyn.analysis.viewer import render_view, view
from circuitdyn.analysis.viewer_data import edge_records, metric_rows, node_layout, page_data
from circuitdyn.attribution import attribute
from circuitdyn.attribution.files import save_attribution
from circuitdyn.attribution.result import Attribution
from circuitdyn.cli import main
from circuitdyn.core.outputs import ArtifactError
from circuitdyn.tasks import get_task, tokenize_pairs
from tests.browser import browser_or_skip
from tests.conftest import perturbed, zoo_model


@pytest.fixture(scope="module")
def pair():
    model = zoo_model("llama")
    data = tokenize_pairs(model.tokenizer, get_task("addition").examples(8, seed=2))
    base = attribute(model, "head", data, "logit_diff", per_example=True)
    tuned = attribute(perturbed(model, 3, scale=0.1), "head", data, "logit_diff", per_example=True)
    return base, tuned


def _data(html: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="circuitdyn-data">(.*?)</script>', html, re.S)[1])


def test_the_layout_puts_input_heads_mlps_and_logits_in_rows(pair):
    g = pair[0].graph
    nodes = {n["name"]: n for n in node_layout(g)}
    assert nodes["input"]["row"] == 0 and nodes["logits"]["row"] == 2 * g.spec.n_layers + 1
    assert [nodes[f"a1.h{h}"]["row"] for h in range(4)] == [3] * 4 and nodes["m1"]["row"] == 4
    assert [nodes[f"a0.h{h}"]["x"] for h in range(4)] == [0.125, 0.375, 0.625, 0.875]


def test_edge_records_hold_each_rankings_top_and_the_spread_over_examples(pair):
    base, tuned = pair
    records, n_edges = edge_records(base, tuned, max_edges=5)
    assert n_edges == base.graph.n_edges == 82
    names = [r["name"] for r in records]
    change = {n: tuned.score(n) - base.score(n) for n in base.graph.edge_names()}
    for key in (lambda n: abs(base.score(n)), lambda n: abs(tuned.score(n)), lambda n: abs(change[n])):
        assert set(sorted(change, key=key, reverse=True)[:5]) <= set(names)
    assert 5 <= len(records) <= 20 and len(set(names)) == len(names)
    floor = 0.01 * float(base.scores.abs().max())
    for r in records:
        i, j = base.graph.edge_index(r["name"])
        assert r["v"] == pytest.approx([base.score(r["name"]), tuned.score(r["name"])])
        assert r["change"] == pytest.approx(change[r["name"]], abs=1e-7)
        assert r["relative"] == pytest.approx(change[r["name"]] / max(abs(base.score(r["name"])), floor), rel=1e-5)
        per = base.per_example[:, i, j].double()
        s = r["spread"][0]
        assert s["n"] == 8 and s["mean"] == pytest.approx(float(per.mean()), abs=1e-9)
        assert s["sd"] == pytest.approx(float(per.std()), rel=1e-9)
        assert s["p90"] == pytest.approx(float(np.quantile(per.numpy(), 0.9)), rel=1e-9)
        assert s["positive"] == pytest.approx(float((per > 0).double().mean()))
        d = (tuned.per_example[:, i, j] - base.per_example[:, i, j]).double()
        assert r["change_spread"]["mean"] == pytest.approx(float(d.mean()), abs=1e-7)
        assert r["owners"] == (list(base.graph.owners(j)) or ["logits"])
    kv = next(r for r in edge_records(base, tuned, max_edges=82)[0] if r["destination"] == "a1.kv1<v>")
    assert kv["owners"] == ["a1.h2", "a1.h3"] and kv["kind"] == "v"


def test_metric_rows_are_the_paired_test_of_the_per_example_metrics(pair):
    base, tuned = pair
    rows = {r["metric"]: r for r in metric_rows(base, tuned)}
    mb, mt = circuit_metrics(base, per_example=True), circuit_metrics(tuned, per_example=True)
    for metric in ("intensity", "entropy", "normalized_entropy", "kurtosis"):
        d = paired_delta(metric, mb[metric].numpy(), mt[metric].numpy())
        row = rows[metric]
        assert row["values"] == pytest.approx([d.base_mean, d.tuned_mean])
        assert row["delta"] == pytest.approx(d.delta) and row["ci"] == pytest.approx([d.ci_low, d.ci_high])
        assert row["n"] == 8
    diversity = [sample_diversity(edge_vector(a, per_example=True)) for a in (base, tuned)]
    assert rows["sample_diversity"]["values"] == pytest.approx(diversity)
    assert rows["sample_diversity"]["delta"] == pytest.approx(diversity[1] - diversity[0])
    single = {r["metric"]: r for r in metric_rows(base)}
    assert "delta" not in single["intensity"] and len(single["intensity"]["values"]) == 1


def test_the_page_is_one_self_contained_file(pair, tmp_path):
    base, tuned = pair
    hostile = Attribution(base.scores, base.graph, base.metric_values, base.config, base.per_example,
                          {**base.provenance, "metric": "</script><script>alert(1)</script>"})
    html = render_view(hostile, tuned, labels=("base", "grpo"), title="a <b>title</b>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)  # nothing fetched from anywhere
    assert "<link" not in html and "@import" not in html and "<script src" not in html
    assert html.count("</script>") == 2  # the data cannot close its own element
    assert "a &lt;b&gt;title&lt;/b&gt;" in html
    data = _data(html)
    assert data["labels"] == ["base", "grpo"] and data["sources"][0]["metric"].startswith("</script>")
    assert data == json.loads(json.dumps(page_data(hostile, tuned, labels=("base", "grpo"), title="a <b>title</b>")))


def test_bad_input_is_refused_by_name(pair, tmp_path):
    base, _ = pair
    gpt2 = zoo_model("gpt2")
    other = attribute(gpt2, "head", tokenize_pairs(gpt2.tokenizer, get_task("addition").examples(4)), "logit_diff",
                      per_example=True)
    with pytest.raises(ComparisonError, match="different graphs"):
        render_view(base, other)
    with pytest.raises(ArtifactError, match=r"must be a \.html file"):
        view(base, out=tmp_path / "page.png")
    with pytest.raises(ArtifactError, match="is a folder"):
        view(base, out=tmp_path)
    with pytest.raises(ArtifactError, match="expected an Attribution"):
        render_view(torch.zeros(3))
    with pytest.raises(ValueError, match="max_edges"):
        edge_records(base, max_edges=0)


def test_the_view_command_writes_the_page(pair, tmp_path, capsys):
    base, tuned = pair
    save_attribution(base, tmp_path / "b.safetensors")
    save_attribution(tuned, tmp_path / "t.safetensors")
    out = tmp_path / "p.html"
    assert main(["view", str(tmp_path / "b.safetensors"), str(tmp_path / "t.safetensors"), "--labels", "base,dpo",
                 "--top", "7", "--out", str(out)]) == 0
    data = _data(out.read_text())
    assert data["labels"] == ["base", "dpo"] and data["top"] == 7 and data["n_edges"] == 82
    with pytest.raises(SystemExit) as exit:
        main(["view", str(tmp_path / "b.safetensors"), "--labels", "one", "--out", str(out)])
    assert exit.value.code == 2 and "two names separated by a comma" in capsys.readouterr().err


def _blank(png: bytes) -> bool:
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    ink = (image < 200).any(-1).mean()  # share of pixels that are not near-white
    return ink < 0.01 or len(np.unique(image.reshape(-1, 3), axis=0)) < 16


def test_in_chromium_the_slider_sets_the_drawn_edges_without_console_errors(pair, tmp_path):
    base, tuned = pair
    page = view(base, tuned, out=tmp_path / "diff.html", labels=("base", "grpo"), top=10, max_edges=40)
    held = len(_data(page.read_text())["edges"])
    with browser_or_skip() as browser:
        browser.open(page)
        def edges() -> int:
            return len(browser.find_all("#edges path.edge"))

        assert browser.script("return document.body.dataset.ready") == "1"
        assert edges() == 10
        slider = browser.find("#top")
        browser.press(slider, "home")
        assert edges() == 1
        for _ in range(4):
            browser.press(slider, "right")
        assert edges() == 5
        browser.press(slider, "end")
        assert edges() == held
        kinds = set(browser.script("return [...document.querySelectorAll('#edges path.edge')].map(p => p.dataset.kind)"))
        assert {"q", "k", "v"} <= kinds
        browser.click(browser.find("#view-base"))
        assert "ranked by |base|" in browser.script("return document.getElementById('shown').textContent")
        browser.click(browser.find("#view-change"))
        browser.click(browser.find("#relative"))
        assert "relative change" in browser.script("return document.getElementById('shown').textContent")
        cells = browser.script("return [...document.querySelectorAll('#metrics tbody tr')].map(r => r.cells.length)")
        assert cells == [6] * 5  # metric, base, grpo, change, CI, p
        assert browser.script("return document.body.dataset.errors") is None
        assert [e for e in browser.console() if e.get("level") == "SEVERE"] == []
        assert not _blank(browser.screenshot())


def test_in_chromium_a_page_error_is_seen(tmp_path):
    """The console check can fail: a page that throws reports a SEVERE entry."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><html><body><p>text</p><script>undefinedFunction()</script></body></html>")
    with browser_or_skip() as browser:
        browser.open(page)
        assert any("undefinedFunction" in e.get("message", "") for e in browser.console() if e.get("level") == "SEVERE")
        assert _blank(browser.screenshot())  # and the blank check sees a page with next to nothing on it


def test_a_page_of_mean_scores_only(pair, tmp_path):
    """An imported attribution (EAP-IG's JSON: no per-example scores, no examples) draws; its metrics are the
    mean scores' own, and a change beside a per-example attribution is the plain difference, without a CI."""
    from circuitdyn.circuits.formats import export_attribution, import_eap_ig_json

    base, tuned = pair
    imported = import_eap_ig_json(export_attribution(base, tmp_path / "b.json"), base.graph)
    data = page_data(imported, tuned)
    assert all(r["spread"][0] is None and r["spread"][1]["n"] == 8 for r in data["edges"])
    assert "change_spread" not in data["edges"][0]
    rows = {r["metric"]: r for r in data["metrics"]}
    pooled = [float(circuit_metrics(a)["intensity"]) for a in (imported, tuned)]
    assert rows["intensity"]["values"] == pytest.approx(pooled) and "ci" not in rows["intensity"]
    assert rows["intensity"]["delta"] == pytest.approx(pooled[1] - pooled[0])
    assert rows["sample_diversity"]["values"][0] is None and "delta" not in rows["sample_diversity"]
    assert data["sources"][0]["imported"]["format"] == "eap-ig-json" and data["sources"][0]["examples"] == 0
    assert "circuitdyn-data" in render_view(imported)
