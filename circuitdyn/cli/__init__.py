"""The command line, `circuitdyn attribute | compare | study | train | report | install-real | view | export |
import`: `main.py` runs the commands (`circuit_files.py` the last three), `inputs.py` reads what they are given."""

from circuitdyn.cli.main import build_parser, main, run_command

__all__ = ["build_parser", "main", "run_command"]
