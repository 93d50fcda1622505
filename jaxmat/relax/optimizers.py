"""Per-system FIRE and L-BFGS on concatenated atoms (pure JAX, jit-compiled).

Arrays are padded: atoms (A,), systems (S + 1,) where the last system slot collects padding atoms.
Every system has its own step size, mixing, counters and history; systems whose ``active`` flag is
off do not move and keep their state. Defaults follow ASE's optimizers so step counts are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


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

    def step(self, atom_state, system_state, positions, forces, system_index, active):
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

    def step(self, atom_state, system_state, positions, forces, system_index, active):
        n, m = active.shape[0], self.memory
        idx = system_index
        s_hist, y_hist, rho, count = atom_state["s"], atom_state["y"], system_state["rho"], system_state["count"]
        # history update (newest entry at index m - 1)
        s_new = positions - atom_state["r0"]
        y_new = atom_state["f0"] - forces  # gradient difference
        ys = _segment(jnp.sum(y_new * s_new, -1), idx, n)
        add = active & (system_state["iteration"] > 0)
        if self.curvature_check:
            add = add & (ys > 1e-12)
        add_atoms = add[idx][:, None, None]
        s_hist = jnp.where(add_atoms, jnp.concatenate([s_hist[:, 1:], s_new[:, None]], 1), s_hist)
        y_hist = jnp.where(add_atoms, jnp.concatenate([y_hist[:, 1:], y_new[:, None]], 1), y_hist)
        rho = jnp.where(add[:, None], jnp.concatenate([rho[:, 1:], (1.0 / jnp.where(ys != 0, ys, 1.0))[:, None]], 1), rho)
        count = jnp.where(add, jnp.minimum(count + 1, m), count)
        valid = jnp.arange(m)[None, :] >= (m - count)[:, None]  # (n, m)
        # two-loop recursion on the gradient g = -f
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

        z = jax.lax.fori_loop(0, m, forward, z)
        step = -z
        longest = jax.ops.segment_max(jnp.linalg.norm(step, axis=-1), idx, n)
        scale = jnp.where(longest >= self.max_step, self.max_step / jnp.where(longest > 0, longest, 1.0), 1.0)
        dr = step * scale[idx][:, None] * self.damping
        moving = active[idx][:, None]
        keep_atoms = lambda new, old: jnp.where(active[idx].reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
        new_atoms = {"s": s_hist, "y": y_hist, "r0": keep_atoms(positions, atom_state["r0"]), "f0": keep_atoms(forces, atom_state["f0"])}
        new_systems = {"rho": rho, "count": count, "iteration": jnp.where(active, system_state["iteration"] + 1, system_state["iteration"])}
        return new_atoms, new_systems, positions + jnp.where(moving, dr, 0.0)


OPTIMIZERS = {"fire": FIRE, "lbfgs": LBFGS}  # the one table of optimizers: CLI choices, relax(optimizer=name)


def make_optimizer(name: str, **options):
    """An optimizer by its name in :data:`OPTIMIZERS`."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: use {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](**options)
