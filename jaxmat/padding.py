"""Padded sizes: the one place for rounding array sizes up, so changing batches reuse a few compiled shapes."""

from __future__ import annotations

import numpy as np


def bucket(n: int, minimum: int = 8, bits: int = 3) -> int:
    """Round up to the next m * 2^k with m in [2^bits, 2^(bits+1)): at most 1/2^bits padding (12.5 % for
    bits=3, 25 % for bits=2) and about 2^bits sizes per doubling, never below ``minimum``."""
    n = max(int(n), int(minimum))
    step = 2 ** max(int(np.floor(np.log2(n))) - bits, 0)
    return round_up(n, step)


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= n."""
    return int(-(-int(n) // int(multiple)) * int(multiple))


def pad(array, extra: int, value=0) -> np.ndarray:
    """``array`` with ``extra`` rows (first axis) of ``value`` appended: the one padding helper of the relax loops."""
    array = np.asarray(array)
    return np.concatenate([array, np.full((extra,) + array.shape[1:], value, array.dtype)])
