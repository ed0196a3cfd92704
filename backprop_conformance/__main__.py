"""``python -m backprop_conformance replay CASE.json`` and ``python -m backprop_conformance plot REPORT.json``."""

import sys

from backprop_conformance.conformance.__main__ import main

sys.exit(main())
