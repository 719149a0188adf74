"""``python -m torchshim``: the CLI."""

from __future__ import annotations

import sys

from torchshim.cli import main

if __name__ == "__main__":
    sys.exit(main())
