"""Command line: ``sklearn-e2cm`` or ``python -m sklearn_e2cm`` (see :mod:`sklearn_e2cm._cli`).

Subcommands ``demo``, ``fit``, ``curve`` and ``predict``; ``--help`` on each.
"""

import sys

from ._cli import main
from ._cli.demo import demo

__all__ = ["main", "demo"]

if __name__ == "__main__":
    sys.exit(main())
