"""Two processes with the gloo backend give the same scores as one process."""

import os

import torch

from circuitdyn.attribution.sharded import attribute_sharded, shard_bounds
from tests.gloo import run_ranks


def _worker(rank: int, out_dir: str) -> None:
    from circuitdyn.attribution.files import save_attribution
    from circuitdyn.models import load_model
    from circuitdyn.tasks import Addition, tokenize_pairs

    torch.set_num_threads(1)
    m = load_model("zoo:llama", device="cpu")
    data = tokenize_pairs(m.tokenizer, Addition().examples(10, seed=4), answer_tokens=2)
    a = attribute_sharded(m, "head", data, "answer_nll", ablation="zero", per_example=True)
    save_attribution(a, os.path.join(out_dir, f"rank{rank}.safetensors"))


def test_two_gloo_processes_match_one(tmp_path):
    from circuitdyn.attribution import attribute
    from circuitdyn.attribution.files import load_attribution
    from circuitdyn.models import load_model
    from circuitdyn.tasks import Addition, tokenize_pairs

    run_ranks(_worker, 2, tmp_path, str(tmp_path))
    m = load_model("zoo:llama", device="cpu")
    data = tokenize_pairs(m.tokenizer, Addition().examples(10, seed=4), answer_tokens=2)
    single = attribute(m, "head", data, "answer_nll", ablation="zero", per_example=True, batch_size=5)
    for rank in (0, 1):
        got = load_attribution(tmp_path / f"rank{rank}.safetensors")
        assert float((got.scores - single.scores).abs().max()) <= 1e-6
        assert float((got.per_example - single.per_example).abs().max()) <= 1e-6
        assert torch.allclose(got.metric_values, single.metric_values, atol=1e-6)
        assert got.provenance["world_size"] == 2


def test_shard_bounds():
    assert shard_bounds(10, 3) == [0, 3, 6, 10]
    import pytest

    from circuitdyn.attribution import AttributionError
    with pytest.raises(AttributionError, match="at least one per rank"):
        shard_bounds(1, 2)


def _rank_one_fails(rank: int) -> None:
    import torch.distributed as dist

    dist.barrier()
    if rank == 1:
        raise ValueError("rank 1 broke on purpose")


def test_a_failing_rank_is_reported_not_hung(tmp_path):
    """The teardown helper (tests/gloo.py) re-raises a rank's error through mp.spawn, skipping the barrier
    the other rank can no longer reach. Which error mp.spawn reports first is a race: rank 1's own, or rank 0's
    barrier losing its peer; either way the run ends with an error instead of hanging."""
    import time

    import pytest
    import torch.multiprocessing as mp

    t0 = time.perf_counter()
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 broke on purpose|Connection reset|Connection closed"):
        run_ranks(_rank_one_fails, 2, tmp_path)
    assert time.perf_counter() - t0 < 120
