"""slab."""
