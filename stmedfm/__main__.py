"""``python -m stmedfm``: the same program as the ``stmedfm`` command."""

import sys

from stmedfm.cli import main

if __name__ == "__main__":
    sys.exit(main())
