import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitdyn.graph import Graph, GraphError, GraphSpec, Granularity
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
