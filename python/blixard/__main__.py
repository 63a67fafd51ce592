"""`python -m blixard ...`: the CLI, for when the `blixard` script is not on PATH."""

import sys

from blixard.cli import main

sys.exit(main())
