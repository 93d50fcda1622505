"""Scheduling a relaxation: the batch's capacities and the queue, shared by the host and the device loop.

Each structure counts its rows against an atom budget (its atoms, plus three cell rows when cells
relax). :func:`capacities` sizes the batch once per run; :func:`admit` takes, in queue order, the
structures that fit beside the running ones (in-flight batching: a finished system's room goes to the
next in the queue, never to a later, smaller one, so results do not depend on the batch).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxmat.padding import round_up


class Capacities(NamedTuple):
    """rows: the atom budget of one batch (rows of optimizer coordinates); systems: most systems at once."""

    rows: int
    systems: int


def row_sizes(structures, queue, relax_cell: bool) -> dict:
    """The rows each queued structure counts against the budget: its atoms, + 3 cell rows when cells relax."""
    return {i: len(structures[i]) + (3 if relax_cell else 0) for i in queue}


def capacities(sizes: dict, max_atoms: int | None = None, max_systems: int | None = None) -> Capacities:
    """The batch of a run: the row budget max_atoms as given (default: every row, at most max(4096, the largest
    structure); never below the largest structure, which then runs alone); systems: max_systems or as many of the
    smallest structures as fit, at most the queue's length. The loops pad their arrays beyond the budget
    (:func:`padded_rows`); no batch holds more rows than the budget."""
    largest = max(sizes.values())
    budget = max(largest, max_atoms or min(sum(sizes.values()), max(4096, largest)))
    systems = max_systems or min(len(sizes), max(1, budget // max(1, min(sizes.values()))))
    return Capacities(int(budget), int(systems))


def padded_rows(budget: int, devices: int = 1) -> int:
    """The padded row count of a batch with this budget: a multiple of 64 and of the device count (rows shard evenly)."""
    return round_up(budget, int(np.lcm(64, devices)))


def admit(queue: list, sizes: dict, running_rows: int, running_systems: int, capacity: Capacities) -> list:
    """Pop from the front of the queue the structures that fit beside running_systems using running_rows; the
    first that does not fit stops the admission (queue order is kept)."""
    admitted = []
    while (queue and running_systems + len(admitted) < capacity.systems
           and running_rows + sizes[queue[0]] <= capacity.rows):
        index = queue.pop(0)
        admitted.append(index)
        running_rows += sizes[index]
    return admitted
