from tests.typecheck import checker  # the runtime type checker: pytest --jaxtyping-packages=circuitdyn,tests.checker

__all__ = ["checker"]
