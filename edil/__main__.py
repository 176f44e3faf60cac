import sys

from edil.cli import main

sys.exit(main())
