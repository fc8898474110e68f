"""Learning dynamics: eNTK decomposition, confidence and diversity, snapshots over training."""

from circuitdyn.dynamics.behaviour import confidence, distinct_n, diversity, pass_at_k
from circuitdyn.dynamics.ntk import NTKDecomposition, NTKError, entk, feature_variability, predicted_logprob_change
from circuitdyn.dynamics.sequence_ntk import SequenceNTK, sequence_entk

__all__ = ["NTKDecomposition", "NTKError", "SequenceNTK", "confidence", "distinct_n", "diversity", "entk",
           "feature_variability", "pass_at_k", "predicted_logprob_change", "sequence_entk"]
