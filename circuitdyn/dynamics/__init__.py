"""Learning dynamics: eNTK decomposition, confidence and diversity, snapshots over training."""

from circuitdyn.dynamics.behaviour import confidence, distinct_n, diversity, pass_at_k
from circuitdyn.dynamics.ntk import NTKDecomposition, NTKError, entk, feature_variability, predicted_logprob_change

__all__ = ["NTKDecomposition", "NTKError", "confidence", "distinct_n", "diversity", "entk", "feature_variability",
           "pass_at_k", "predicted_logprob_change"]
