"""The one status rule (jaxmat.relax.status.decide): every status reached, their precedence, and no
convergence or max_steps verdict away from an optimizer's point; on numpy and inside jit alike."""

import jax
import numpy as np
import pytest

from jaxmat.relax import status as st

LIMITS = dict(fmax=0.05, max_force=100.0, max_steps=10)


def judge(non_finite=False, largest=1.0, lost=False, at_point=True, steps=3, active=True, jit=False):
    """One system's (code, running, lost)."""
    arrays = [np.array([v]) for v in (st.RUNNING, active, non_finite, float(largest), lost, at_point, steps)]
    arrays[0], arrays[-1] = arrays[0].astype(np.int32), arrays[-1].astype(np.int32)
    decide = jax.jit(lambda *a: st.decide(*a, **LIMITS)) if jit else (lambda *a: st.decide(*a, **LIMITS))
    code, running, lost = decide(*arrays)
    return int(code[0]), bool(running[0]), bool(lost[0])


@pytest.mark.parametrize("jit", [False, True])
def test_each_status_is_reached(jit):
    assert judge(jit=jit) == (st.RUNNING, True, False)
    assert judge(non_finite=True, jit=jit)[:2] == (st.NON_FINITE, False)
    assert judge(largest=500.0, jit=jit)[:2] == (st.EXPLODED, False)
    assert judge(lost=True, jit=jit) == (st.SEARCH_FAILED, False, True)
    assert judge(largest=0.01, jit=jit)[:2] == (st.CONVERGED, False)
    assert judge(steps=10, jit=jit)[:2] == (st.MAX_STEPS, False)


def test_precedence():
    assert judge(non_finite=True, largest=500.0, lost=True, steps=10)[0] == st.NON_FINITE
    assert judge(largest=500.0, lost=True, steps=10)[0] == st.EXPLODED
    assert judge(largest=0.01, lost=True, steps=10) == (st.SEARCH_FAILED, False, True)
    assert judge(largest=0.01, steps=10)[0] == st.CONVERGED
    assert judge(non_finite=True, lost=True)[2] is False  # a failed system is not counted as lost


def test_no_verdict_between_points():
    assert judge(largest=0.01, at_point=False) == (st.RUNNING, True, False)
    assert judge(steps=10, at_point=False) == (st.RUNNING, True, False)
    assert judge(largest=500.0, at_point=False)[0] == st.EXPLODED  # failures are judged anywhere


def test_inactive_systems_keep_their_code():
    args = [np.array([st.CONVERGED], np.int32), np.array([False]), np.array([True]), np.array([500.0]), np.array([True]),
            np.array([True]), np.array([20], np.int32)]
    code, running, lost = st.decide(*args, **LIMITS)
    assert int(code[0]) == st.CONVERGED and not bool(running[0]) and not bool(lost[0])


def test_messages():
    assert st.message(st.NON_FINITE, 0.0) == "non-finite energy, forces or stress"
    assert st.message(st.EXPLODED, 1234.5) == "exploding forces (max 1.23e+03 eV/Å)"
    assert st.message(st.SEARCH_FAILED, 0.0) == "line search failed (ASE raises 'LineSearch failed!')"
    assert st.message(st.CONVERGED, 0.01) == st.message(st.MAX_STEPS, 1.0) == ""
    assert {st.STATUS_NAMES[c] for c in (st.NON_FINITE, st.EXPLODED, st.SEARCH_FAILED)} == {"failed"}
