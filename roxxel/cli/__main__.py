"""``python -m roxxel.cli``, as the ``roxxel`` command. Importing this module runs nothing."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
