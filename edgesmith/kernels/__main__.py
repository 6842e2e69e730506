"""``python -m edgesmith.kernels``: build the compiled kernels (what ``make kernels`` runs)."""

import sys

from edgesmith.kernels import build

print(f"built {build().name}", file=sys.stderr)
