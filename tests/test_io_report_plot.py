import json

import numpy as np
import pytest
import torch
from matplotlib import image as plt_image

from circuitdyn.analysis import plot
from circuitdyn.analysis.comparison import compare
from circuitdyn.analysis.report import comparison_records, direction_sentence, markdown_table, to_csv
from circuitdyn.attribution import attribute
from circuitdyn.attribution.files import load_attribution, save_attribution
from circuitdyn.circuits.circuit import top_n
from circuitdyn.core.outputs import ArtifactError, safe_child
from circuitdyn.graph import Graph
from circuitdyn.tasks import Addition, tokenize_pairs
from tests.conftest import zoo_model


@pytest.fixture(scope="module")
def pair():
    m = zoo_model("llama")
    data = tokenize_pairs(m.tokenizer, Addition().examples(6, seed=2))
    a = attribute(m, "head", data, "logit_diff", per_example=True)
    b = attribute(zoo_model("qwen2"), "head", data, "logit_diff", per_example=True)
    return a, b


def test_round_trip(tmp_path, pair):
    a, _ = pair
    path = save_attribution(a, tmp_path / "a.safetensors")
    b = load_attribution(path, expected_graph=a.graph)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.per_example, b.per_example)
    assert b.config == a.config and b.provenance["model"]["spec"] == "zoo:llama"
    assert not list(tmp_path.glob("*.tmp"))


def test_refuses_bad_files(tmp_path, pair):
    a, _ = pair
    path = save_attribution(a, tmp_path / "a.safetensors")
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="trunc.safetensors"):
        load_attribution(tmp_path / "trunc.safetensors")
    with pytest.raises(ArtifactError, match="no such file"):
        load_attribution(tmp_path / "missing.safetensors")
    other = Graph.from_model(zoo_model("gpt2"), "head")
    with pytest.raises(ArtifactError, match="does not match"):
        load_attribution(path, expected_graph=other)
    # tampered metadata: a different schema version
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    meta = json.loads(header["__metadata__"]["circuitdyn"])
    meta["version"] = 99
    header["__metadata__"]["circuitdyn"] = json.dumps(meta)
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    (tmp_path / "v99.safetensors").write_bytes(len(new_header).to_bytes(8, "little") + new_header + data[8 + header_len:])
    with pytest.raises(ArtifactError, match="version 99"):
        load_attribution(tmp_path / "v99.safetensors")


def test_paths_cannot_escape(tmp_path):
    assert safe_child(tmp_path, "a/b.png").is_relative_to(tmp_path)
    with pytest.raises(ArtifactError, match="escapes"):
        safe_child(tmp_path, "../evil.png")


def test_report_and_plots(tmp_path, pair):
    a, b = pair
    c = compare(a, b, name="qwen2 - llama")
    records = comparison_records([c], family="zoo")
    assert records[0]["family"] == "zoo" and {"delta", "ci_low", "p_value"} <= records[0].keys()
    text = to_csv(records, tmp_path / "t.csv").read_text()
    assert text.splitlines()[0].startswith("family,comparison,metric")
    md = markdown_table([c])
    assert "qwen2 - llama" in md and md.count("\n") == 2
    assert direction_sentence(c, "intensity").startswith("qwen2 - llama: ")
    figs = [
        plot.score_heatmap(a, tmp_path / "h.png"),
        plot.delta_heatmap(a, b, tmp_path / "d.png"),
        plot.metric_bars([c], ["intensity", "gini"], tmp_path / "m.png"),
        plot.score_distribution({"a": a, "b": b}, tmp_path / "s.png"),
        plot.per_layer_lines({"a": a, "b": b}, "intensity", tmp_path / "l.png"),
        plot.draw_circuit(top_n(a, 10), a.scores, tmp_path / "c.png"),
    ]
    heat, delta, bars, dist, lines, circuit = figs
    # what each figure draws, read back from the figure itself
    assert heat.axes[0].images[0].get_array().shape == tuple(a.scores.shape)
    d = delta.axes[0].images[0].get_array()
    assert np.allclose(np.nan_to_num(np.ma.getdata(d)), ((b.scores - a.scores) * a.graph.edge_mask).numpy(), atol=1e-6)
    assert [ax.get_title() for ax in bars.axes] == ["delta intensity", "delta gini"]
    assert [[bar.get_height() for bar in ax.patches] for ax in bars.axes] == \
        [[pytest.approx(c["intensity"].delta)], [pytest.approx(c["gini"].delta)]]
    assert sorted(t.get_text() for t in dist.axes[0].get_legend().get_texts()) == ["a", "b"]
    assert len(lines.axes[0].lines) == 2 and len(lines.axes[0].lines[0].get_xdata()) == a.graph.spec.n_layers + 1
    assert circuit.axes[0].get_title().endswith("(10 edges)")
    # and every file is a picture, not a blank canvas: many non-background pixels, several colours
    for name in "hdmslc":
        pixels = plt_image.imread(tmp_path / f"{name}.png")[..., :3]
        ink = (np.abs(pixels - 1.0).sum(-1) > 0.1).mean()
        colours = len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))
        assert ink > 0.02 and colours > 8, (name, ink, colours)


def test_plotting_leaves_global_style_alone(tmp_path, pair):
    import matplotlib

    before = dict(matplotlib.rcParams)
    plot.score_heatmap(pair[0], tmp_path / "x.png")
    assert dict(matplotlib.rcParams) == before
