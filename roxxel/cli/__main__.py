"""``python -m roxxel.cli``, as the ``roxxel`` command."""

import sys

from . import main

sys.exit(main())
