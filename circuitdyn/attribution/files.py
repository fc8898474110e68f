"""Save and load attributions as safetensors + JSON metadata. No pickle; writes are atomic.

A file holds the tensors `scores`, `metric_values` and optionally `per_example`, and in its metadata a
JSON document with the schema name and version, the graph spec, the attribution config, provenance and
one sha256 over the tensors AND the rest of that document. Saving refuses non-finite scores; loading
validates the schema, the version, the hash (a changed value, metric, ablation, fingerprint or version
is refused) and every tensor's shape against the graph, and names the file in every error. Files of
earlier versions carry no hash over their metadata (versions 1 and 2 none at all): they are refused
unless loaded with `verify=False`, which says what it could not check.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from circuitdyn.attribution.config import AttributionConfig
from circuitdyn.attribution.result import Attribution
from circuitdyn.core.atomic import atomic_file
from circuitdyn.core.digest import document_sha256
from circuitdyn.core.outputs import ArtifactError
from circuitdyn.graph import Granularity, Graph, GraphSpec
from circuitdyn.models.weights import state_sha256

SCHEMA = "circuitdyn.attribution"
#: 4: one sha256 over tensors and metadata; 3: the tensors' sha256; 2: the graph records `qkv`; 1: merged
#: layer-level q/k/v (read as such)
VERSION = 4
logger = logging.getLogger(__name__)


def content_sha256(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """The sha256 of the tensors and of the metadata document without its own hash field (canonical JSON)."""
    return document_sha256(meta, extra=state_sha256(tensors))


def save_attribution(attribution: Attribution, path: str | Path, *, per_example: bool = True) -> Path:
    """Write an attribution. Per-example scores are stored for the real edges only ([n, n_edges]);
    `per_example=False` leaves them out (the file then holds the mean scores and metric values)."""
    path = Path(path)
    tensors = {"scores": attribution.scores.contiguous(), "metric_values": attribution.metric_values.contiguous()}
    if attribution.per_example is not None and per_example:
        tensors["per_example_edges"] = attribution.per_example[:, attribution.graph.edge_mask].contiguous()
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ArtifactError(f"refusing to save {path}: its {name} contain NaN or inf (the attribution is "
                                "broken: check the metric, the model dtype and the data)")
    meta: dict[str, Any] = {"schema": SCHEMA, "version": VERSION, "graph": attribution.graph.spec.as_dict(),
                            "config": attribution.config.as_dict(), "provenance": attribution.provenance}
    meta = json.loads(json.dumps(meta))  # the document as it will be read back (tuples as lists)
    meta["sha256"] = content_sha256(tensors, meta)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"circuitdyn": json.dumps(meta)})
    return path


def load_attribution(path: str | Path, *, expected_graph: Graph | None = None, verify: bool = True) -> Attribution:
    """Read an attribution file, verified against its hash. `verify=False` loads a file of an earlier version
    (whose metadata no hash covers), with a warning naming what was not checked."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get("circuitdyn")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{path}: not a readable safetensors file (truncated or corrupted?): {err}") from None
    if raw_meta is None:
        raise ArtifactError(f"{path}: no circuitdyn metadata; it was not written by circuitdyn.save_attribution")
    try:
        meta = json.loads(raw_meta)
        if meta.get("schema") != SCHEMA:
            raise ArtifactError(f"{path}: schema {meta.get('schema')!r}, expected {SCHEMA!r}")
        if meta.get("version") not in (1, 2, 3, VERSION):
            raise ArtifactError(f"{path}: version {meta.get('version')!r}; this circuitdyn reads versions 1 to {VERSION}")
        _verify(path, meta, tensors, verify)
        spec_d = dict(meta["graph"])
        if meta["version"] == 1 and spec_d.get("granularity") == "layer":
            spec_d["qkv"] = "merged"  # version 1 layer graphs had one attention destination per layer
        spec_d["granularity"] = Granularity(spec_d["granularity"])
        graph = Graph(GraphSpec(**spec_d))
        config = AttributionConfig(**meta["config"])
    except ArtifactError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path}: invalid metadata ({err})") from None
    if expected_graph is not None and expected_graph.spec != graph.spec:
        raise ArtifactError(f"{path}: its graph {graph.spec} does not match the expected {expected_graph.spec}")
    shape = (graph.n_src, graph.n_dst)
    scores = tensors.get("scores")
    if scores is None or tuple(scores.shape) != shape:
        raise ArtifactError(f"{path}: scores have shape {None if scores is None else tuple(scores.shape)}, graph needs {shape}")
    values = tensors.get("metric_values")
    if values is None or values.ndim != 1:
        raise ArtifactError(f"{path}: missing or malformed metric_values")
    per_example = tensors.get("per_example")  # versions 1 and 2: dense
    if per_example is not None and tuple(per_example.shape) != (values.shape[0], *shape):
        raise ArtifactError(f"{path}: per_example has shape {tuple(per_example.shape)}, expected {(values.shape[0], *shape)}")
    edges = tensors.get("per_example_edges")
    if edges is not None:
        if tuple(edges.shape) != (values.shape[0], graph.n_edges):
            raise ArtifactError(f"{path}: per_example_edges has shape {tuple(edges.shape)}, expected "
                                f"{(values.shape[0], graph.n_edges)}")
        per_example = torch.zeros(values.shape[0], *shape, dtype=edges.dtype)
        per_example[:, graph.edge_mask] = edges
    if not torch.isfinite(scores).all():
        raise ArtifactError(f"{path}: scores contain NaN or inf")
    return Attribution(scores, graph, values, config, per_example, meta.get("provenance", {}))


def _verify(path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor], verify: bool) -> None:
    """Refuse a file whose content does not match its hash; an older file only with `verify=False`."""
    version = meta["version"]
    if version == VERSION:
        if meta.get("sha256") != content_sha256(tensors, meta):
            raise ArtifactError(f"{path}: its scores or metadata do not match the sha256 recorded when it was saved: "
                                "the file was edited or damaged; recompute the attribution")
        return
    if version == 3 and meta.get("tensors_sha256") != state_sha256(tensors):
        raise ArtifactError(f"{path}: its tensors do not match the sha256 recorded when it was saved: the file was "
                            "modified or damaged; recompute the attribution")
    unchecked = "its metadata (metric, ablation, provenance)" if version == 3 else "its scores and metadata"
    if verify:
        raise ArtifactError(f"{path}: a version {version} file, whose hash does not cover {unchecked}, so an edit "
                            "there cannot be seen: recompute the attribution, or load it with verify=False to "
                            "trust it as it is")
    logger.warning("%s: a version %d file loaded with verify=False: %s not checked against a hash", path, version,
                   unchecked)
