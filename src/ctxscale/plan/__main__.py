"""``python -m ctxscale.plan``: ``ctxscale plan`` (:mod:`ctxscale.plan.cli`)."""

import sys

from ctxscale.plan.cli import main

sys.exit(main())
