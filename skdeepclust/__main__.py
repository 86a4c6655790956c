"""``python -m skdeepclust`` runs the ``skdeepclust`` command."""

import sys

from .cli import main

sys.exit(main())
