"""edgesmith: ship trained PyTorch models to the edge, with parity and latency per target.

The Python API is :mod:`edgesmith.api` (``from edgesmith import api as es``); it is
not re-exported here because ``edgesmith.export`` is the exporters' package.
"""

__version__ = "0.1.0"
