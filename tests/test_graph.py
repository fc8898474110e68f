import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitdyn.graph import Granularity, Graph, GraphError, GraphSpec
from tests.conftest import zoo_model


def spec(L=2, H=4, K=4, parallel=False, post=False, gran=Granularity.HEAD):
    return GraphSpec(n_layers=L, n_heads=H, n_kv_heads=K, d_model=8, parallel_attn_mlp=parallel,
                     post_attn_norm=post, granularity=gran)


def test_counts_head_level():
    g = Graph(spec())
    assert g.n_src == 1 + 2 * (4 + 1)
    assert g.n_dst == 2 * (3 * 4 + 1) + 1
    assert g.sources[0].name == "input" and g.destinations[-1].name == "logits"
    assert g.edge_index("a0.h1->a1.h2<k>") == (g.source_index("a0.h1"), g.dest_index("a1.h2<k>"))
    with pytest.raises(GraphError, match="not an edge"):
        g.edge_index("a1.h0->a0.h0<q>")
    with pytest.raises(GraphError, match="no source"):
        g.edge_index("a9.h0->logits")


def test_parallel_blocks_mlp_does_not_read_own_attention():
    seq, par = Graph(spec()), Graph(spec(parallel=True))
    j = par.dest_index("m0")
    assert par.n_upstream[j] == 1 and seq.n_upstream[seq.dest_index("m0")] == 5
    assert par.n_edges == seq.n_edges - 2 * 4


def test_gqa_names_and_owners():
    g = Graph(spec(H=4, K=2))
    assert "a0.kv1<k>" in [d.name for d in g.destinations]
    assert g.owners(g.dest_index("a0.kv1<v>")) == ("a0.h2", "a0.h3")
    assert g.owners(g.dest_index("a1.h3<q>")) == ("a1.h3",)


def test_layer_graph_and_aggregation():
    head = Graph(spec())
    layer = Graph(spec(gran=Granularity.LAYER))
    assert [s.name for s in layer.sources] == ["input", "a0", "m0", "a1", "m1"]
    a_src, a_dst = head.layer_aggregation()
    # aggregating the head-level edge mask gives the layer-level edge mask
    agg = a_src.T @ head.edge_mask.float() @ a_dst
    assert torch.equal(agg > 0, layer.edge_mask)


def test_networkx_export():
    g = Graph(spec(L=1))
    scores = torch.randn(g.n_src, g.n_dst)
    nxg = g.to_networkx(scores)
    assert nxg.number_of_edges() == g.n_edges
    assert nx.is_directed_acyclic_graph(nxg)
    u, v = "input", "a0.h0<q>"
    assert nxg[u][v]["score"] == pytest.approx(float(scores[g.source_index(u), g.dest_index(v)]))


def test_graph_from_each_zoo_model(family):
    g = Graph.from_model(zoo_model(family))
    assert g.spec.post_attn_norm == (family == "gemma3")
    assert g.spec.parallel_attn_mlp == (family == "neox")
    assert len(g.post_norm_hooks) == (2 if family == "gemma3" else 0)


@settings(max_examples=60, deadline=None)
@given(L=st.integers(1, 5), K=st.integers(1, 4), group=st.integers(1, 3), parallel=st.booleans(),
       gran=st.sampled_from(list(Granularity)))
def test_index_math_properties(L, K, group, parallel, gran):
    g = Graph(spec(L=L, H=K * group, K=K, parallel=parallel, gran=gran))
    edges = list(g.edges())
    assert len(edges) == g.n_edges == int(g.edge_mask.sum())
    names = g.edge_names()
    assert len(set(names)) == len(names)
    for i, j in edges:  # every edge goes forward in depth
        src, dst = g.sources[i], g.destinations[j]
        assert src.layer < dst.layer or (src.layer == dst.layer and src.kind == "head" and dst.kind == "mlp"
                                         or src.layer == dst.layer and src.kind == "attn" and dst.kind == "mlp")
    for dh in g.dest_hooks:  # destination hooks tile the destination axis
        assert 0 <= dh.start < dh.stop <= g.n_dst
    covered = sorted({j for dh in g.dest_hooks for j in range(dh.start, dh.stop)})
    assert covered == list(range(g.n_dst))
    covered = sorted(i for sh in g.source_hooks for i in range(sh.start, sh.stop))
    assert covered == list(range(g.n_src))


def split_edges(L, parallel):
    """The paper's layer graph: per layer q, k, v each read 1 + 2l sources, the MLP 2 + 2l (1 + 2l in parallel
    blocks), the logits 1 + 2L."""
    return sum(3 * (1 + 2 * l) + (1 + 2 * l if parallel else 2 + 2 * l) for l in range(L)) + 1 + 2 * L


def merged_edges(L, parallel):
    return sum((1 + 2 * l) + (1 + 2 * l if parallel else 2 + 2 * l) for l in range(L)) + 1 + 2 * L


@pytest.mark.parametrize("L", [1, 2, 6, 12])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("K", [4, 2, 1])
def test_layer_graph_edge_counts_follow_the_formula(L, parallel, K):
    split = Graph(spec(L=L, K=K, parallel=parallel, gran=Granularity.LAYER))
    merged = Graph(GraphSpec(**{**split.spec.__dict__, "qkv": "merged"}))
    assert split.n_edges == split_edges(L, parallel) == 4 * L * L + (2 if parallel else 3) * L + 1
    assert merged.n_edges == merged_edges(L, parallel)
    assert split.n_dst == 4 * L + 1 and merged.n_dst == 2 * L + 1
    assert [d.name for d in split.destinations[:4]] == ["a0<q>", "a0<k>", "a0<v>", "m0"]
    assert split.owners(split.dest_index("a0<k>")) == ("a0",)


def test_the_papers_twelve_layer_graph_has_613_edges():
    assert Graph(spec(L=12, H=12, K=12, gran=Granularity.LAYER)).n_edges == 613
    assert Graph(GraphSpec(**{**spec(L=12, gran=Granularity.LAYER).__dict__, "qkv": "merged"})).n_edges == 325


def test_qkv_option_is_validated():
    with pytest.raises(GraphError, match="unknown qkv"):
        GraphSpec(**{**spec(gran=Granularity.LAYER).__dict__, "qkv": "fused"})
    with pytest.raises(GraphError, match="only at layer granularity"):
        GraphSpec(**{**spec().__dict__, "qkv": "merged"})


@pytest.mark.parametrize("qkv", ["split", "merged"])
def test_head_aggregation_covers_both_layer_graphs(qkv):
    head = Graph(spec(H=4, K=2))
    layer = Graph(GraphSpec(**{**spec(H=4, K=2, gran=Granularity.LAYER).__dict__, "qkv": qkv}))
    a_src, a_dst = head.layer_aggregation(qkv)
    assert a_dst.shape == (head.n_dst, layer.n_dst) and a_dst.sum(1).eq(1).all()
    assert torch.equal((a_src.T @ head.edge_mask.float() @ a_dst) > 0, layer.edge_mask)


def test_from_model_builds_both_layer_graphs():
    m = zoo_model("llama")
    split, merged = Graph.from_model(m, "layer"), Graph.from_model(m, "layer", qkv="merged")
    L = m.cfg.n_layers
    assert split.n_edges == split_edges(L, False) and merged.n_edges == merged_edges(L, False)
    neox = Graph.from_model(zoo_model("neox"), "layer")
    assert neox.spec.parallel_attn_mlp and neox.n_edges == split_edges(neox.spec.n_layers, True)
