#!/usr/bin/env bash
# The peer environment for benchmarks/bench_peers.py: auto-circuit 1.0.1 and hannamw/EAP-IG (commit 795f560)
# on transformer-lens 2.x, which cannot share a process with circuitdyn (transformer-lens 4.x). Optional:
# never a CI requirement.
#   bash benchmarks/peers/setup.sh [VENV]        (default .venv-peers, at the repository root)
# EAP-IG is not on the package registries: it is installed from EAP_IG_SRC (a source tree of that commit,
# e.g. `git archive 795f560 | tar -x -C DIR`) where set, else from GitHub at that commit (needs the network).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-peers}"
PY="${PY:-python3}"
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# torch is pinned to circuitdyn's CPU build (an unpinned torch pulls a multi-GB CUDA build); auto-circuit
# is installed without its requirements: the ones it imports for EAP are listed, the rest (tracr and jax,
# kaleido, word2word) serve its other tools
"$VENV/bin/pip" install -q "torch==$(grep '^torch==' constraints-cpu.txt | cut -d= -f3)" \
    "transformer-lens==2.18.0" "pyarrow<18" einops plotly ordered-set attrs blobfile  # pyarrow 18+ needs numpy 2, TL 2.x numpy 1
"$VENV/bin/pip" install -q --no-deps "auto-circuit==1.0.1"
EAP_IG_COMMIT=795f5607b25638935aec89aee3c1cb4bd9ed72f1
"$VENV/bin/pip" install -q "matplotlib>=3.10.1,<3.11"  # EAP-IG's one other requirement (its drawing module)
"$VENV/bin/pip" install -q --no-deps "${EAP_IG_SRC:-eap @ git+https://github.com/hannamw/EAP-IG@$EAP_IG_COMMIT}"
"$VENV/bin/python" -c "import auto_circuit.prune_algos.mask_gradient, eap.attribute, transformer_lens; from importlib.metadata import version; print('peers ready: transformer-lens', version('transformer-lens'), 'auto-circuit', version('auto-circuit'), 'eap (EAP-IG)', version('eap'))"
