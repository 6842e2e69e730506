"""dolphin."""
