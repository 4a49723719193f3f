"""Small reference data shipped with the package (label names)."""
