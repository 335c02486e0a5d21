"""``python -m syntra``: the ``syntra`` command."""

import sys

from syntra.cli import main

if __name__ == "__main__":
    sys.exit(main())
