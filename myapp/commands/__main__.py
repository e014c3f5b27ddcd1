"""``python -m myapp.commands``: the same as the ``myapp`` console script."""

import sys

from myapp.commands import main

if __name__ == "__main__":
    sys.exit(main())
