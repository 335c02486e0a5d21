"""``python -m lycan`` runs the ``lycan`` command."""

import sys

from lycan.cli import main

sys.exit(main())
