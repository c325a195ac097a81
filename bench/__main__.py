"""``python -m bench``: see ``python -m bench --help`` and docs/performance.md."""

import sys

from bench.runner import main

if __name__ == "__main__":  # spawned child processes import this module as __mp_main__
    sys.exit(main())
