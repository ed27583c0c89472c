"""``python -m ctxscale.evaluate``: the evaluate step (:mod:`ctxscale.evaluate.cli`)."""

import sys

from ctxscale.evaluate.cli import main

if __name__ == "__main__":
    sys.exit(main())
