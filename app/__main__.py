"""``python -m edil.app``: the ``edil`` command line."""

import sys

from edil.app.cli import main

sys.exit(main())
