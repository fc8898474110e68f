"""The RL-circuitry study: each model scored on its own correct generations, compared with honest statistics."""

from circuitdyn.study.config import StudyConfig, StudyError
from circuitdyn.study.generation import Generation, encode_prompt, generate, scored_batch
from circuitdyn.study.protocol import run_study
from circuitdyn.study.result import HEADLINE, Entry, StudyResult, Test

__all__ = ["Entry", "Generation", "HEADLINE", "StudyConfig", "StudyError", "StudyResult", "Test", "encode_prompt",
           "generate", "run_study", "scored_batch"]
