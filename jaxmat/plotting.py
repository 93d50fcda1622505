"""Matplotlib for files, not screens: the one place that selects the Agg backend."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (plots are written to PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
