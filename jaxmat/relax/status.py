"""A relaxing system's status: the codes, their names and messages, and the one rule that decides them.

Both relaxation loops judge each system after an evaluation (and after a line search took it) with
:func:`decide`: a failure (non-finite energy, forces or stress; exploding forces; a line search that
could not open) ends it first, then - only where the optimizer stands at one of its points -
convergence (max generalized force < fmax, eV/Å, cell rows included) and max_steps. The rule is
written with ``jax.numpy``, so it runs inside the compiled device loop and on host arrays alike.
"""

from __future__ import annotations

import jax.numpy as jnp

RUNNING, CONVERGED, MAX_STEPS, NON_FINITE, EXPLODED, SEARCH_FAILED = 0, 1, 2, 3, 4, 5
STATUS_NAMES = {CONVERGED: "converged", MAX_STEPS: "max_steps", NON_FINITE: "failed", EXPLODED: "failed", SEARCH_FAILED: "failed"}
"""the status a result reports, per finished code"""


def message(code: int, fmax: float) -> str:
    """Why a system failed ("" unless it did); fmax: its largest generalized force (eV/Å)."""
    code = int(code)
    if code == NON_FINITE:
        return "non-finite energy, forces or stress"
    if code == EXPLODED:
        return f"exploding forces (max {float(fmax):.3g} eV/Å)"
    if code == SEARCH_FAILED:
        return "line search failed (ASE raises 'LineSearch failed!')"
    return ""


def decide(status, active, non_finite, largest, lost, at_point, steps, *, fmax, max_force, max_steps):
    """Each system's status after an evaluation (arrays over systems, numpy or JAX).

    status: the codes so far (kept where nothing is decided); active: still relaxing before this evaluation;
    non_finite: its energy, forces or stress are not finite; largest: its largest generalized force (eV/Å);
    lost: its line search failed (the step never completed); at_point: the optimizer stands at one of its
    points (convergence and max_steps are judged only there); steps: optimizer steps taken so far. fmax (eV/Å):
    converged below it; max_force (eV/Å): exploded above it; max_steps: out of steps at or beyond it.
    Precedence: non-finite, exploded, lost, converged, max_steps. Returns (new status codes (int32), running:
    active and still relaxing, lost: the systems that ended by a lost line search).
    """
    failed = active & non_finite
    exploded = active & ~non_finite & (largest > max_force)
    lost = active & ~non_finite & ~exploded & lost
    judged = active & ~non_finite & ~exploded & ~lost & at_point
    converged = judged & (largest < fmax)
    out_of_steps = judged & ~converged & (steps >= max_steps)
    running = active & ~(failed | exploded | lost | converged | out_of_steps)
    new = jnp.select([failed, exploded, lost, converged, out_of_steps],
                     [NON_FINITE, EXPLODED, SEARCH_FAILED, CONVERGED, MAX_STEPS], status).astype(jnp.int32)
    return new, running, lost
