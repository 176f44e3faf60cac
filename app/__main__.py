"""``python -m edil.app``: the ``edil`` command line."""

import sys

from edil.app._embedded import die_with_parent
from edil.app.cli import main

die_with_parent()  # only when started by the embedded network (it sets the variable)
sys.exit(main())
