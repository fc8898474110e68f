"""`python -m circuitdyn.cli ...`, as the `circuitdyn` command."""

import sys

from circuitdyn.cli.main import main

sys.exit(main())
