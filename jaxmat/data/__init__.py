"""Formulas, element tables, structure records and dataset sources."""
