"""Export to the formats other circuit tools read (EAP-IG's graph JSON, dot, GraphML) and EAP-IG's JSON read back:
round trips equal the attribution on every edge, the JSON is EAP-IG's layout, bad files are refused by name."""

import json

import networkx as nx
import pytest
import torch

from circuitdyn.attribution import attribute
from circuitdyn.attribution.files import load_attribution
from circuitdyn.circuits import Circuit, top_n
from circuitdyn.circuits.formats import (
    dot_text,
    eap_ig_dict,
    export_attribution,
    import_eap_ig_circuit,
    import_eap_ig_json,
)
from circuitdyn.cli import main
from circuitdyn.core.outputs import ArtifactError
from circuitdyn.graph import Graph
from circuitdyn.tasks import get_task, tokenize_pairs
from tests.conftest import zoo_model


def _attribution(family="gpt2", granularity="head", **kw):
    model = zoo_model(family)
    data = tokenize_pairs(model.tokenizer, get_task("addition").examples(6, seed=1))
    return attribute(model, granularity, data, "logit_diff", per_example=True, **kw)


@pytest.mark.parametrize("family,granularity", [("gpt2", "head"), ("neox", "head"), ("llama", "head"),
                                                ("gemma3", "layer")])
def test_eap_ig_json_round_trip_equals_the_attribution_on_every_edge(tmp_path, family, granularity):
    a = _attribution(family, granularity)
    circuit = top_n(a, 12)
    path = export_attribution(a, tmp_path / "g.json", circuit=circuit)
    back = import_eap_ig_json(path, a.graph)
    assert torch.equal(back.scores, a.scores)  # float32 -> JSON double -> float32 is exact
    assert torch.equal(import_eap_ig_circuit(path, a.graph).edges, circuit.edges)
    assert back.provenance["imported"]["format"] == "eap-ig-json" and back.per_example is None


def test_the_json_is_a_plain_dict_with_eap_igs_keys_and_names(tmp_path):
    a = _attribution()
    export_attribution(a, tmp_path / "g.json", circuit=top_n(a, 5))
    doc = json.loads((tmp_path / "g.json").read_text())
    assert set(doc) == {"cfg", "nodes", "edges"}
    assert {"n_layers", "n_heads", "d_model", "parallel_attn_mlp"} <= set(doc["cfg"])
    assert set(doc["nodes"]) == {"input", "a0.h0", "a0.h1", "a0.h2", "a0.h3", "m0", "a1.h0", "a1.h1", "a1.h2",
                                 "a1.h3", "m1", "logits"}
    assert doc["edges"]["a0.h1->a1.h2<q>"] == {"score": a.score("a0.h1->a1.h2<q>"), "in_graph": False}
    assert sum(e["in_graph"] for e in doc["edges"].values()) == 5 and len(doc["edges"]) == a.graph.n_edges
    assert all(set(e) == {"score", "in_graph"} for e in doc["edges"].values())
    assert doc["nodes"]["logits"] == {"in_graph": True}
    # without a circuit every edge is in the graph
    assert all(e["in_graph"] for e in eap_ig_dict(a)["edges"].values())


def test_graphml_round_trip_through_networkx(tmp_path):
    a = _attribution("llama")
    export_attribution(a, tmp_path / "g.graphml", "graphml", circuit=top_n(a, 7))
    g = nx.read_graphml(tmp_path / "g.graphml")
    assert g.number_of_edges() == a.graph.n_edges
    for name in a.graph.edge_names():
        src, dst = name.split("->")
        assert g.edges[src, dst]["score"] == a.score(name)
    assert sum(d["in_graph"] for _, _, d in g.edges(data=True)) == 7
    assert g.nodes["a1.kv0<k>"]["owners"] == "a1.h0,a1.h1"  # a grouped kv head feeds its query heads


def test_dot_draws_the_circuit_with_qkv_styles_and_signs():
    a = _attribution()
    circuit = top_n(a, 6)
    text = dot_text(a, circuit)
    assert text.startswith("digraph circuit {") and text.rstrip().endswith("}")
    drawn = [line for line in text.splitlines() if "->" in line and "tooltip" in line]
    assert len(drawn) == 6
    for name in circuit.edge_names():
        score = a.score(name)
        line = next(line for line in drawn if f"{name}: " in line)
        kind = name.rsplit("<", 1)[1][0] if "<" in name else ""
        assert {"q": "style=solid", "k": "style=dashed", "v": "style=dotted", "": "style=solid"}[kind] in line
        assert ("#2166ac" if score >= 0 else "#b2182b") in line


def test_import_refuses_another_model_a_layer_graph_and_broken_files(tmp_path):
    a = _attribution()
    path = export_attribution(a, tmp_path / "g.json")
    other = Graph.from_model(zoo_model("llama"), "head")
    with pytest.raises(ArtifactError, match="another graph|differ in"):
        import_eap_ig_json(path, other)
    layer = Graph.from_model(zoo_model("gpt2"), "layer")
    with pytest.raises(ArtifactError, match="granularity='head'"):
        import_eap_ig_json(path, layer)
    doc = json.loads(path.read_text())
    del doc["cfg"]["circuitdyn_graph"]  # as EAP-IG writes it for a graph it built itself: names decide
    with pytest.raises(ArtifactError, match="granularity='head'"):
        import_eap_ig_json(_write(tmp_path / "plain.json", doc), layer)
    cut = dict(doc, edges=dict(list(doc["edges"].items())[:-3]))
    with pytest.raises(ArtifactError, match="no entry for 3 of the graph's 110 edges"):
        import_eap_ig_json(_write(tmp_path / "cut.json", cut), a.graph)
    bad = json.loads(json.dumps(doc))
    bad["edges"]["m1->logits"]["score"] = None
    with pytest.raises(ArtifactError, match="m1->logits has score None"):
        import_eap_ig_json(_write(tmp_path / "bad.json", bad), a.graph)
    (tmp_path / "not.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a JSON file"):
        import_eap_ig_json(tmp_path / "not.json", a.graph)
    with pytest.raises(ArtifactError, match=r"no \['nodes', 'edges'\]"):
        import_eap_ig_json(_write(tmp_path / "keys.json", {"cfg": {}}), a.graph)
    with pytest.raises(ArtifactError, match="export format"):
        export_attribution(a, tmp_path / "x.svg", "svg")
    with pytest.raises(ArtifactError, match=r"must be a \.graphml file"):
        export_attribution(a, tmp_path / "x.xml", "graphml")
    with pytest.raises(ArtifactError, match="another graph"):
        export_attribution(a, tmp_path / "x.json", circuit=Circuit.full(other))


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return path


def test_the_export_and_import_commands(tmp_path, capsys):
    a = _attribution()
    from circuitdyn.attribution.files import save_attribution

    save_attribution(a, tmp_path / "a.safetensors")
    assert main(["export", str(tmp_path / "a.safetensors"), "--top", "9", "--out", str(tmp_path / "a.json")]) == 0
    assert "in_graph: the top 9 edges" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "a.safetensors"), "--format", "dot", "--out", str(tmp_path / "a.dot")]) == 0
    assert main(["import", str(tmp_path / "a.json"), "--model", "zoo:gpt2", "--out", str(tmp_path / "b.safetensors")]) == 0
    back = load_attribution(tmp_path / "b.safetensors")
    assert torch.equal(back.scores, a.scores) and back.provenance["imported"]["format"] == "eap-ig-json"
    assert main(["import", str(tmp_path / "a.json"), "--model", "zoo:llama", "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "differ in" in capsys.readouterr().err and not (tmp_path / "c.safetensors").exists()
