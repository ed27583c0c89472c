"""``python -m ctxscale.figures``: the figures step (:func:`ctxscale.figures.main`)."""

import sys

from ctxscale.figures import main

sys.exit(main())
