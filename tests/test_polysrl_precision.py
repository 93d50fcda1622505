"""Public PolySRL calls at float64 in a process as a user has it: JAX float64 off, no x64 fixture. Each call
enters its own precision scope, returns float64 results that outlive it and leaves the switch off."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxmat.config import apply_overrides, load_config
from jaxmat.errors import ConfigError
from jaxmat.precision import float64_enabled
from conftest import REPO

SMALL = ["data.source=embedded:heo", "data.limit=16", "train.batch_size=8", "train.epochs=1", "model.hidden=8",
         "model.n_samples=2", "model.stoichiometry_layers=1", "model.structure_layers=1", "model.dtype=float64"]


@pytest.fixture(autouse=True)
def float32_process():
    """JAX as a user's process starts: float64 off (whatever another test module left switched on)."""
    with jax.enable_x64(False):
        assert not float64_enabled()
        yield
        assert not float64_enabled(), "a public call left float64 switched on"


@pytest.fixture(scope="module")
def float64_run(tmp_path_factory):
    from jaxmat.polysrl.trainer import run_training

    workdir = tmp_path_factory.mktemp("run64")
    with jax.enable_x64(False):
        history = run_training(apply_overrides(load_config(REPO / "configs/polysrl.yaml"), SMALL), workdir, progress=False)
    return workdir, history


def test_training_from_python(float64_run):
    _, history = float64_run
    assert [row["epoch"] for row in history] == [1] and np.isfinite(history[0]["loss"])


def test_load_encoder_and_embed(float64_run):
    from jaxmat.polysrl import StoichiometryEmbedder, load_encoder

    encoder = load_encoder(float64_run[0])
    mu, sigma = encoder.embed(["Fe2O3", "MgCoNiCuZnO5"])
    assert isinstance(mu, np.ndarray) and mu.dtype == sigma.dtype == np.float64 and mu.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(mu, axis=1), 1.0, rtol=1e-12)  # float64 numbers, not float32's
    assert all(leaf.dtype == np.float64 for leaf in jax.tree_util.tree_leaves(encoder.params))  # kept after the scope
    again = StoichiometryEmbedder(encoder.config, encoder.params).embed(["Fe2O3", "MgCoNiCuZnO5"])[0]
    np.testing.assert_array_equal(again, mu)


def test_evaluate_a_float64_encoder(float64_run, tmp_path):
    from jaxmat.polysrl.evaluation import evaluate

    csv = tmp_path / "t.csv"
    csv.write_text("formula,target\n" + "".join(f"{f},{i}\n" for i, f in enumerate(["NaCl", "KCl", "LiF", "MgO", "CaO", "ZnS"])))
    results = evaluate(str(csv), "pretrained", float64_run[0], folds=2, epochs=1)
    assert len(results["mae"]["folds"]) == 2 and np.isfinite(results["mae"]["mean"])


def test_import_reference_checkpoint_refuses_an_unknown_dtype(tmp_path):
    from jaxmat.polysrl import import_reference_checkpoint

    with pytest.raises(ConfigError, match="float16"):
        import_reference_checkpoint(tmp_path / "encoder.pt", dtype="float16")
