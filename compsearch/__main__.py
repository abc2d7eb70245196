"""``python -m compsearch`` runs the command line (see :mod:`compsearch.cli`)."""

from __future__ import annotations

import sys

from compsearch.cli import main

if __name__ == "__main__":
    sys.exit(main())
