"""Per-system FIRE, L-BFGS and L-BFGS with line search on concatenated atoms (pure JAX, jit-compiled).

Arrays are padded: atoms (A,), systems (S + 1,) where the last system slot collects padding atoms.
Every system has its own step size, mixing, counters and history; systems whose ``active`` flag is
off do not move and keep their state. Defaults follow ASE's optimizers so step counts are comparable.

The form: ``init_atoms(n)`` / ``init_systems(n)`` (numpy state), ``step(atom_state, system_state,
positions, forces, system_index, active, energy)`` -> (atom_state, system_state, positions); an
optimizer whose steps take several force calls (:class:`LBFGSLineSearch`) also has ``advance``, which
takes each evaluation first and says which systems stand at one of ASE's points. :data:`OPTIMIZERS`
is the one table of names (CLI choices, ``relax(optimizer=name)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.relax import linesearch


def _segment(values, system_index, n_segments):
    return jax.ops.segment_sum(values, system_index, n_segments)


@dataclass(frozen=True)
class FIRE:
    """FIRE (Bitzek et al. 2006) as in ase.optimize.FIRE, per system.

    dt 0.1, dt_max 1.0, n_min 5, f_inc 1.1, f_dec 0.5, alpha 0.1, f_alpha 0.99, max_step 0.2 Å.
    ``max_step_per_atom=False`` (ASE): the whole system's displacement norm is capped at max_step;
    True caps each atom's displacement instead.
    """

    dt: float = 0.1
    dt_max: float = 1.0
    n_min: int = 5
    f_inc: float = 1.1
    f_dec: float = 0.5
    alpha: float = 0.1
    f_alpha: float = 0.99
    max_step: float = 0.2
    max_step_per_atom: bool = False

    name = "fire"

    def init_atoms(self, n_atoms: int) -> dict:
        return {"velocity": np.zeros((n_atoms, 3))}

    def init_systems(self, n_systems: int) -> dict:
        return {
            "dt": np.full(n_systems, self.dt), "alpha": np.full(n_systems, self.alpha),
            "n_pos": np.zeros(n_systems, np.int32), "started": np.zeros(n_systems, bool),
        }

    def step(self, atom_state, system_state, positions, forces, system_index, active, energy=None):
        n = active.shape[0]
        v, f = atom_state["velocity"], forces
        dt, alpha, n_pos, started = (system_state[k] for k in ("dt", "alpha", "n_pos", "started"))
        vf = _segment(jnp.sum(v * f, -1), system_index, n)
        ff = _segment(jnp.sum(f * f, -1), system_index, n)
        vv = _segment(jnp.sum(v * v, -1), system_index, n)
        mix = started & (vf > 0.0)
        reset = started & ~mix
        f_unit = f / jnp.sqrt(jnp.where(ff > 0, ff, 1.0))[system_index][:, None]
        v_mixed = (1.0 - alpha)[system_index][:, None] * v + alpha[system_index][:, None] * f_unit * jnp.sqrt(vv)[system_index][:, None]
        v = jnp.where(mix[system_index][:, None], v_mixed, jnp.where(reset[system_index][:, None], 0.0, v))
        grow = mix & (n_pos > self.n_min)
        dt = jnp.where(grow, jnp.minimum(dt * self.f_inc, self.dt_max), jnp.where(reset, dt * self.f_dec, dt))
        alpha = jnp.where(grow, alpha * self.f_alpha, jnp.where(reset, self.alpha, alpha))
        n_pos = jnp.where(mix, n_pos + 1, jnp.where(reset, 0, n_pos))
        v = v + dt[system_index][:, None] * f
        dr = dt[system_index][:, None] * v
        if self.max_step_per_atom:
            norm = jnp.linalg.norm(dr, axis=-1)
            dr = dr * jnp.where(norm > self.max_step, self.max_step / jnp.where(norm > 0, norm, 1.0), 1.0)[:, None]
        else:
            norm = jnp.sqrt(_segment(jnp.sum(dr * dr, -1), system_index, n))
            dr = dr * jnp.where(norm > self.max_step, self.max_step / jnp.where(norm > 0, norm, 1.0), 1.0)[system_index][:, None]
        moving = active[system_index][:, None]
        keep = lambda new, old: jnp.where(active, new, old)
        new_atoms = {"velocity": jnp.where(moving, v, atom_state["velocity"])}
        new_systems = {"dt": keep(dt, system_state["dt"]), "alpha": keep(alpha, system_state["alpha"]),
                       "n_pos": keep(n_pos, system_state["n_pos"]), "started": started | active}
        return new_atoms, new_systems, positions + jnp.where(moving, dr, 0.0)


@dataclass(frozen=True)
class LBFGS:
    """Limited-memory BFGS as in ase.optimize.LBFGS (memory 100, H0 = 1/alpha with alpha 70 eV/Å^2,
    max_step 0.2 Å on the largest atomic displacement, no line search), per system.

    ``curvature_check`` (default on): a step pair with y.s <= 0 is not added to the history, so the
    inverse-Hessian estimate stays positive definite (ASE adds it regardless).
    """

    memory: int = 100
    alpha: float = 70.0
    max_step: float = 0.2
    damping: float = 1.0
    curvature_check: bool = True

    name = "lbfgs"

    def init_atoms(self, n_atoms: int) -> dict:
        return {"s": np.zeros((n_atoms, self.memory, 3)), "y": np.zeros((n_atoms, self.memory, 3)),
                "r0": np.zeros((n_atoms, 3)), "f0": np.zeros((n_atoms, 3))}

    def init_systems(self, n_systems: int) -> dict:
        return {"rho": np.zeros((n_systems, self.memory)), "count": np.zeros(n_systems, np.int32),
                "iteration": np.zeros(n_systems, np.int32)}

    def step(self, atom_state, system_state, positions, forces, system_index, active, energy=None):
        n, idx = active.shape[0], system_index
        add = active & (system_state["iteration"] > 0)
        s_hist, y_hist, rho, count = self._remember(atom_state, system_state, positions, forces, idx, add)
        step = self._direction(s_hist, y_hist, rho, count, forces, idx)
        longest = jax.ops.segment_max(jnp.linalg.norm(step, axis=-1), idx, n)
        scale = jnp.where(longest >= self.max_step, self.max_step / jnp.where(longest > 0, longest, 1.0), 1.0)
        dr = step * scale[idx][:, None] * self.damping
        moving = active[idx][:, None]
        keep_atoms = lambda new, old: jnp.where(active[idx].reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
        new_atoms = {"s": s_hist, "y": y_hist, "r0": keep_atoms(positions, atom_state["r0"]), "f0": keep_atoms(forces, atom_state["f0"])}
        new_systems = {"rho": rho, "count": count, "iteration": jnp.where(active, system_state["iteration"] + 1, system_state["iteration"])}
        return new_atoms, new_systems, positions + jnp.where(moving, dr, 0.0)

    def _remember(self, atom_state, system_state, positions, forces, idx, add):
        """The history with the pair (s, y) = (x - x0, g - g0) appended for systems in ``add`` (newest at m - 1)."""
        n, m = add.shape[0], self.memory
        s_hist, y_hist, rho, count = atom_state["s"], atom_state["y"], system_state["rho"], system_state["count"]
        s_new = positions - atom_state["r0"]
        y_new = atom_state["f0"] - forces  # gradient difference
        ys = _segment(jnp.sum(y_new * s_new, -1), idx, n)
        if self.curvature_check:
            add = add & (ys > 1e-12)
        add_atoms = add[idx][:, None, None]
        s_hist = jnp.where(add_atoms, jnp.concatenate([s_hist[:, 1:], s_new[:, None]], 1), s_hist)
        y_hist = jnp.where(add_atoms, jnp.concatenate([y_hist[:, 1:], y_new[:, None]], 1), y_hist)
        rho = jnp.where(add[:, None], jnp.concatenate([rho[:, 1:], (1.0 / jnp.where(ys != 0, ys, 1.0))[:, None]], 1), rho)
        return s_hist, y_hist, rho, jnp.where(add, jnp.minimum(count + 1, m), count)

    def _direction(self, s_hist, y_hist, rho, count, forces, idx):
        """-H g by the two-loop recursion on the gradient g = -forces, H0 = 1/alpha (Å per eV/Å)."""
        n, m = rho.shape[0], self.memory
        valid = jnp.arange(m)[None, :] >= (m - count)[:, None]  # (n, m)
        q = -forces

        def backward(k, carry):
            q, a = carry
            j = m - 1 - k
            a_j = jnp.where(valid[:, j], rho[:, j] * _segment(jnp.sum(s_hist[:, j] * q, -1), idx, n), 0.0)
            return q - a_j[idx][:, None] * y_hist[:, j], a.at[:, j].set(a_j)

        q, a = jax.lax.fori_loop(0, m, backward, (q, jnp.zeros((n, m), q.dtype)))
        z = q / self.alpha

        def forward(j, z):
            b = rho[:, j] * _segment(jnp.sum(y_hist[:, j] * z, -1), idx, n)
            return z + jnp.where(valid[:, j], a[:, j] - b, 0.0)[idx][:, None] * s_hist[:, j]

        return -jax.lax.fori_loop(0, m, forward, z)


FRESH, SEARCHING, FAILED = 0, 1, 2  # LBFGSLineSearch phases: no evaluation yet, in a line search, gave up


@dataclass(frozen=True)
class LBFGSLineSearch(LBFGS):
    """ase.optimize.LBFGSLineSearch per system: L-BFGS directions (memory 100, H0 = 1/alpha, alpha 70
    eV/Å^2; every pair enters the history, as in ASE) with ASE's strong-Wolfe line search
    (:mod:`jaxmat.relax.linesearch`; c1 0.23, c2 0.46, no trial moves a row more than max_step 0.2 Å
    beyond the last trial).

    In ASE one step runs a whole line search, several force calls. Here every system is a state machine
    fed one evaluation per iteration (``phase``: FRESH before its first evaluation, SEARCHING, FAILED
    after ASE would have raised 'LineSearch failed'): :meth:`advance` tests the trial just evaluated;
    where the search converged (or before the first step) the system stands at one of ASE's points
    (``at_point``), where convergence and max_steps are judged and ASE's step count advances, and
    :meth:`step` starts the next search there (history update, direction p, first trial); elsewhere it
    moves to the next trial x0 + stp p. Positions, steps and force calls are ASE's.
    """

    curvature_check: bool = False

    name = "lbfgs-linesearch"

    def init_atoms(self, n_atoms: int) -> dict:
        return super().init_atoms(n_atoms) | {"p": np.zeros((n_atoms, 3)), "x0": np.zeros((n_atoms, 3))}

    def init_systems(self, n_systems: int) -> dict:
        return (super().init_systems(n_systems) | linesearch.empty(n_systems, np)
                | {"phase": np.full(n_systems, FRESH, np.int32), "at_point": np.zeros(n_systems, bool)})

    @staticmethod
    def _longest(p, idx, n):
        """dr (S,) -> the largest row norm of p * dr per system (Å)."""
        return lambda dr: jax.ops.segment_max(jnp.linalg.norm(p * dr[idx][:, None], axis=-1), idx, n)

    def advance(self, atom_state, system_state, positions, forces, energy, system_index, active):
        """Take the evaluation at the current positions (energy (S,) eV, forces eV/Å) into the line searches
        of the active systems: (atom_state, system_state, at_point (S,), failed (S,))."""
        n, idx, p = active.shape[0], system_index, atom_state["p"]
        search = {k: system_state[k] for k in linesearch.KEYS}
        slope = _segment(jnp.sum(-forces * p, -1), idx, n)  # grad . p, eV
        tested, code = linesearch.test(search, energy, slope, self._longest(p, idx, n), self.max_step)
        phase = system_state["phase"]
        searching = active & (phase == SEARCHING)
        testing = searching & ~search["no_update"]  # ASE stops right after a no_update trial, without a test
        # a WARNING ends the search at the trial as CONVERGENCE does: ASE's failure test (task[1:4] == 'WARN')
        # never matches 'WARNING', so only an ERROR at the start of a search (not a descent direction) fails
        at_point = active & ((phase == FRESH) | (searching & search["no_update"]) | (testing & (code != linesearch.FG)))
        failed = active & (phase == FAILED)
        new = {k: jnp.where(testing, tested[k], search[k]) for k in linesearch.KEYS}
        return atom_state, dict(system_state, **new, at_point=jnp.where(active, at_point, system_state["at_point"])), at_point, failed

    def step(self, atom_state, system_state, positions, forces, system_index, active, energy=None):
        """Systems at a point open a new search there; the others move to their next trial step."""
        n, idx = active.shape[0], system_index
        begin = active & system_state["at_point"]
        s_hist, y_hist, rho, count = self._remember(atom_state, system_state, positions, forces, idx,
                                                    begin & (system_state["iteration"] > 0))
        direction = self._direction(s_hist, y_hist, rho, count, forces, idx)
        rows = _segment(jnp.ones(idx.shape, forces.dtype), idx, n)
        size = jnp.sqrt(_segment(jnp.sum(direction**2, -1), idx, n))
        floor = jnp.sqrt(rows * 1e-10)  # ASE rescales a tiny direction to this length
        direction = jnp.where(((size <= floor) & (size > 0))[idx][:, None], direction / (size / floor)[idx][:, None], direction)
        slope = _segment(jnp.sum(-forces * direction, -1), idx, n)
        opened, error = linesearch.start(energy, slope, self._longest(direction, idx, n), self.max_step)
        search = {k: jnp.where(begin, opened[k], system_state[k]) for k in linesearch.KEYS}
        phase = jnp.where(begin, jnp.where(error, FAILED, SEARCHING), system_state["phase"])
        rows_begin = begin[idx][:, None]
        p = jnp.where(rows_begin, direction, atom_state["p"])
        x0 = jnp.where(rows_begin, positions, atom_state["x0"])
        move = (active & (phase == SEARCHING))[idx][:, None]
        new_atoms = {"s": s_hist, "y": y_hist, "r0": jnp.where(rows_begin, positions, atom_state["r0"]),
                     "f0": jnp.where(rows_begin, forces, atom_state["f0"]), "p": p, "x0": x0}
        new_systems = dict(system_state, **search, rho=rho, count=count, phase=phase,
                           iteration=system_state["iteration"] + begin.astype(system_state["iteration"].dtype))
        return new_atoms, new_systems, jnp.where(move, x0 + search["stp"][idx][:, None] * p, positions)


# the one table of optimizers: CLI choices, relax(optimizer=name)
OPTIMIZERS = {"fire": FIRE, "lbfgs": LBFGS, "lbfgs-linesearch": LBFGSLineSearch}
