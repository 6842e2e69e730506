"""Loading user models (MODEL references) and the built-in zoo."""

from edgesmith.models.loader import load_model, save_pt2
from edgesmith.models.variant import Variant

__all__ = ["Variant", "load_model", "save_pt2"]
