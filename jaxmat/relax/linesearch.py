"""ASE's line search (ase.utils.linesearch.LineSearch, a MINPACK dcsrch variant) for many systems at once.

Every system carries its own search in a dict of (S,) arrays, so systems sit at different stages of
different searches and one force evaluation serves all of them. The search looks along a direction p
(Å per unit step) for a step length stp with the strong Wolfe conditions, c1 = 0.23, c2 = 0.46:

    f(stp) <= f(0) + c1 stp f'(0)        |f'(stp)| <= c2 |f'(0)|        (f in eV, f' = g . p in eV)

Stage codes, explicit per system, as in ASE: ``stage`` 1 until some step has a lower energy than the
sufficient-decrease line and a non-negative slope, 2 afterwards; ``bracket`` once a minimiser lies
between stx and sty; ``case`` (1..4) the interpolation used by the last update (cubic/quadratic
with a higher energy, opposite slopes, a shrinking slope, a growing slope). :func:`start` opens a
search (ASE's task 'START'), :func:`test` takes the energy and slope at the trial step just evaluated
and answers :data:`CONVERGENCE`, :data:`WARNING` (rounding, xtol, stp at its bounds; ASE ends the
search there too, at the trial just evaluated: its failure test compares ``task[1:4]`` with 'WARN',
which never matches) or :data:`FG` with the next trial step (ASE's 'FG': evaluate there). Every trial step is limited so
that no row of the system moves more than ``maxstep`` Å from the last trial (ASE's determine_step);
``longest(dr)`` gives, per system, the largest row norm of ``p * dr`` (Å).
"""

from __future__ import annotations

import jax.numpy as jnp

FG, CONVERGENCE, WARNING, ERROR = 0, 1, 2, 3
C1, C2, XTRAPL, XTRAPU, STPMAX, STPMIN, XTOL = 0.23, 0.46, 1.1, 4.0, 50.0, 1e-8, 1e-14
KEYS = ("stp", "stage", "bracket", "case", "no_update", "ginit", "gtest", "gx", "gy", "finit", "fx", "fy", "stx", "sty",
        "stmin", "stmax", "width", "width1")


def empty(n_systems: int, xp=jnp) -> dict:
    """A closed search for n systems (numpy or jax arrays)."""
    zeros = lambda dtype=float: xp.zeros(n_systems, dtype)
    search = {key: zeros() for key in KEYS}
    search.update(stage=xp.ones(n_systems, xp.int32), case=zeros(xp.int32), bracket=zeros(bool), no_update=zeros(bool))
    return search


def _limit(stp, old_stp, longest, maxstep):
    """ASE's determine_step: the move from old_stp to stp shortened so that no row moves more than maxstep."""
    dr = stp - old_stp
    length = longest(dr)
    dr = jnp.where(length >= maxstep, dr * maxstep / jnp.where(length > 0, length, 1.0), dr)
    return old_stp + dr


def start(f, g, longest, maxstep):
    """Open a search at energy f (eV) and slope g = grad . p (eV): (search, error). The first trial step
    is 1, limited by maxstep; error where g >= 0 (p is not a descent direction; ASE raises)."""
    one = jnp.ones_like(f)
    width = (STPMAX - STPMIN) * one
    search = {"stage": jnp.ones(f.shape, jnp.int32), "bracket": jnp.zeros(f.shape, bool), "case": jnp.zeros(f.shape, jnp.int32),
              "no_update": jnp.zeros(f.shape, bool), "ginit": g, "gtest": C1 * g, "gx": g, "gy": g, "finit": f, "fx": f, "fy": f,
              "stx": 0.0 * one, "sty": 0.0 * one, "stmin": 0.0 * one, "stmax": one + XTRAPU * one, "width": width,
              "width1": width / 0.5}
    search["stp"] = _limit(one, 0.0 * one, longest, maxstep)
    return search, g >= 0


def _cubic_gamma(theta, a, b, s, clamp=False):
    radicand = (theta / s) ** 2 - (a / s) * (b / s)
    return s * jnp.sqrt(jnp.maximum(0.0, radicand) if clamp else radicand)


def _interpolate(search, stp, fp, gp):
    """ASE's LineSearch.update (Moré–Thuente): the trial step stpf before limiting, the interpolation case
    and the new interval (stx, fx, gx best so far; sty, fy, gy the other end)."""
    stx, fx, gx, sty, fy, gy = (search[k] for k in ("stx", "fx", "gx", "sty", "fy", "gy"))
    lower, upper, bracket = search["stmin"], search["stmax"], search["bracket"]
    sign = gp * (gx / jnp.abs(gx))
    theta = 3.0 * (fx - fp) / (stp - stx) + gx + gp
    s = jnp.maximum(jnp.maximum(jnp.abs(theta), jnp.abs(gx)), jnp.abs(gp))
    # case 1: a higher energy; the minimum is bracketed
    gamma = _cubic_gamma(theta, gx, gp, s)
    gamma1 = jnp.where(stp < stx, -gamma, gamma)
    stpc1 = stx + (((gamma1 - gx) + theta) / (((gamma1 - gx) + gamma1) + gp)) * (stp - stx)
    stpq1 = stx + ((gx / ((fx - fp) / (stp - stx) + gx)) / 2.0) * (stp - stx)
    stpf1 = jnp.where(jnp.abs(stpc1 - stx) < jnp.abs(stpq1 - stx), stpc1, stpc1 + (stpq1 - stpc1) / 2.0)
    # case 2: a lower energy and slopes of opposite sign; bracketed
    gamma2 = jnp.where(stp > stx, -gamma, gamma)
    stpc2 = stp + (((gamma2 - gp) + theta) / (((gamma2 - gp) + gamma2) + gx)) * (stx - stp)
    secant = stp + (gp / (gp - gx)) * (stx - stp)
    stpf2 = jnp.where(jnp.abs(stpc2 - stp) > jnp.abs(secant - stp), stpc2, secant)
    # case 3: a lower energy, slopes of the same sign, the slope's magnitude decreases
    gamma3 = _cubic_gamma(theta, gx, gp, s, clamp=True)
    gamma3 = jnp.where(stp > stx, -gamma3, gamma3)
    r3 = ((gamma3 - gp) + theta) / ((gamma3 + (gx - gp)) + gamma3)
    stpc3 = jnp.where((r3 < 0.0) & (gamma3 != 0.0), stp + r3 * (stx - stp), jnp.where(stp > stx, upper, lower))
    inside = jnp.where(jnp.abs(stpc3 - stp) < jnp.abs(secant - stp), stpc3, secant)
    inside = jnp.where(stp > stx, jnp.minimum(stp + 0.66 * (sty - stp), inside), jnp.maximum(stp + 0.66 * (sty - stp), inside))
    outside = jnp.where(jnp.abs(stpc3 - stp) > jnp.abs(secant - stp), stpc3, secant)
    outside = jnp.maximum(lower, jnp.minimum(upper, outside))
    stpf3 = jnp.where(bracket, inside, outside)
    # case 4: a lower energy, slopes of the same sign, the slope's magnitude does not decrease
    theta4 = 3.0 * (fp - fy) / (sty - stp) + gy + gp
    s4 = jnp.maximum(jnp.maximum(jnp.abs(theta4), jnp.abs(gy)), jnp.abs(gp))
    gamma4 = _cubic_gamma(theta4, gy, gp, s4)
    gamma4 = jnp.where(stp > sty, -gamma4, gamma4)
    stpc4 = stp + (((gamma4 - gp) + theta4) / (((gamma4 - gp) + gamma4) + gy)) * (sty - stp)
    stpf4 = jnp.where(bracket, stpc4, jnp.where(stp > stx, upper, lower))
    higher = fp > fx
    case = jnp.select([higher, sign < 0, jnp.abs(gp) < jnp.abs(gx)], [1, 2, 3], 4).astype(jnp.int32)
    stpf = jnp.select([case == 1, case == 2, case == 3], [stpf1, stpf2, stpf3], stpf4)
    swap = ~higher & (sign < 0)
    interval = {"sty": jnp.where(higher, stp, jnp.where(swap, stx, sty)), "fy": jnp.where(higher, fp, jnp.where(swap, fx, fy)),
                "gy": jnp.where(higher, gp, jnp.where(swap, gx, gy)), "stx": jnp.where(higher, stx, stp),
                "fx": jnp.where(higher, fx, fp), "gx": jnp.where(higher, gx, gp)}
    return stpf, case, bracket | (case == 1) | (case == 2), interval


def test(search, f, g, longest, maxstep):
    """The trial at search['stp'] was evaluated: energy f (eV), slope g = grad . p (eV). Returns the search
    with the next trial step and a code per system: CONVERGENCE (strong Wolfe conditions hold), WARNING
    (the search cannot go on) or FG (evaluate at the new search['stp'])."""
    stp, stage, bracket = search["stp"], search["stage"], search["bracket"]
    stmin, stmax, gtest, ginit = search["stmin"], search["stmax"], search["gtest"], search["ginit"]
    ftest = search["finit"] + stp * gtest
    stage = jnp.where((stage == 1) & (f < ftest) & (g >= 0.0), 2, stage)
    warn = ((bracket & ((stp <= stmin) | (stp >= stmax))) | (bracket & (stmax - stmin <= XTOL * stmax))
            | ((stp == STPMAX) & (f <= ftest) & (g <= gtest)) | ((stp == STPMIN) & ((f > ftest) | (g >= gtest))))
    converged = (f <= ftest) & (jnp.abs(g) <= C2 * (-ginit))
    code = jnp.where(converged, CONVERGENCE, jnp.where(warn, WARNING, FG)).astype(jnp.int32)
    stpf, case, bracket, interval = _interpolate(search, stp, f, g)
    stx, sty = interval["stx"], interval["sty"]
    new = _limit(stpf, stp, longest, maxstep)
    new = jnp.where(bracket & (jnp.abs(sty - stx) >= 0.66 * search["width1"]), stx + 0.5 * (sty - stx), new)  # bisection
    width1 = jnp.where(bracket, search["width"], search["width1"])
    width = jnp.where(bracket, jnp.abs(sty - stx), search["width"])
    new_min = jnp.where(bracket, jnp.minimum(stx, sty), new + XTRAPL * (new - stx))
    new_max = jnp.where(bracket, jnp.maximum(stx, sty), new + XTRAPU * (new - stx))
    new = jnp.minimum(jnp.maximum(new, STPMIN), STPMAX)
    no_update = (stx == new) & (new == STPMAX) & (new_min > STPMAX)
    stuck = (bracket & (new < new_min)) | (new >= new_max) | (bracket & (new_max - new_min < XTOL * new_max))
    new = jnp.where(stuck, stx, new)  # no progress possible: back to the best step so far
    updated = dict(search, **interval, stp=new, stage=stage, bracket=bracket, case=case, no_update=no_update,
                   width=width, width1=width1, stmin=new_min, stmax=new_max)
    ended = {**search, "stage": stage}  # ASE saves the stage when it stops
    return {k: jnp.where(code == FG, updated[k], ended[k]) for k in search}, code
