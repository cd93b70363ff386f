"""``python -m aavs.orchestrator.cli``: the `aavs` command (how a Ray job and the tests' child processes
start it)."""

import sys

from aavs.orchestrator.cli import main

sys.exit(main())
