"""``python -m ctxscale.figures``: the figures step (:func:`ctxscale.figures.render.main`)."""

import sys

from ctxscale.figures.render import main

sys.exit(main())
