"""Which MACE model runs: heads (mace-torch's calculator default, unknown ones refused), mace-torch's foundation keys
(offline and cached), and the cache of converted JAX parameters (a second load needs no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from jaxmat.errors import JaxmatInputError


def save_model(path: Path, heads) -> Path:
    """A small random mace-torch model with these heads (per-head E0s, scales and shifts that differ)."""
    import mace  # noqa: F401
    import torch

    from jaxmat.testing import build_small_mace

    model = build_small_mace([8, 12], heads=list(heads)) if len(heads) > 1 else build_small_mace([8, 12])
    if len(heads) > 1:
        model.atomic_energies_fn.atomic_energies = torch.tensor([[-1.0, -2.0], [-5.0, -7.0]], dtype=torch.float64)
        model.scale_shift.scale = torch.tensor([0.1, 0.3], dtype=torch.float64)
        model.scale_shift.shift = torch.tensor([0.0, 0.2], dtype=torch.float64)
    torch.save(model, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {"two": save_model(folder / "two_heads.model", ["pbe", "Default"]),
            "nodefault": save_model(folder / "no_default.model", ["pbe", "r2scan"]),
            "one": save_model(folder / "one_head.model", ["Default"])}


@pytest.fixture(scope="module")
def structure(tmp_path_factory):
    import ase.io
    from ase.build import bulk

    atoms = bulk("MgO", "rocksalt", a=4.2) * (2, 1, 1)
    atoms.rattle(0.1, seed=1)
    path = tmp_path_factory.mktemp("structure") / "mgo.extxyz"
    ase.io.write(path, atoms, format="extxyz")
    return atoms, path


def calculator_energy(model_path, atoms, head=None):
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype="float64",
                          **({"head": head} if head else {}))
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), calc.head


def test_heads_as_mace_torch_calculator(models, structure):
    from jaxmat.forcefields.base import batch_from_atoms
    from jaxmat.forcefields.registry import load_force_field

    atoms, _ = structure
    batch = batch_from_atoms([atoms])
    pbe, _ = calculator_energy(models["two"], atoms, "pbe")
    default, default_head = calculator_energy(models["two"], atoms)
    assert default_head == "Default" and abs(pbe - default) > 1.0
    assert load_force_field(str(models["two"]), "torch").head == "Default"
    assert load_force_field(str(models["two"]), "torch")(batch).energy[0] == pytest.approx(default, abs=1e-9)
    assert load_force_field(str(models["two"]), "torch", head="pbe")(batch).energy[0] == pytest.approx(pbe, abs=1e-9)
    jax_pbe = load_force_field(str(models["two"]), "jax", head="pbe")
    assert jax_pbe.head_index == 0 and jax_pbe(batch).energy[0] == pytest.approx(pbe, abs=1e-8)
    assert load_force_field(str(models["one"]), "jax").head == "Default"


def test_unknown_or_unchosen_head_is_an_input_error(models):
    from jaxmat.forcefields.registry import load_force_field

    for backend in ("torch", "jax"):
        with pytest.raises(JaxmatInputError, match=r"two_heads.model: head 'nope' is not one of the model's heads: pbe, Default"):
            load_force_field(str(models["two"]), backend, head="nope")
        with pytest.raises(JaxmatInputError, match=r"no_default.model: .*none named 'default'.*pbe, r2scan \(--head NAME\)"):
            load_force_field(str(models["nodefault"]), backend)
    with pytest.raises(JaxmatInputError, match="has no heads"):
        load_force_field("lj", head="pbe")


def relax_cli(capsys, *args):
    from jaxmat.relax.__main__ import main

    code = main([*map(str, args), "--no-progress", "--max-steps", "0"])
    return code, capsys.readouterr().err


def test_relax_cli_head(models, structure, tmp_path, capsys, x64):
    import ase.io

    atoms, path = structure
    out = tmp_path / "out.extxyz"
    assert relax_cli(capsys, path, "--model", models["two"], "--head", "pbe", "--out", out)[0] == 0
    assert ase.io.read(out).get_potential_energy() == pytest.approx(calculator_energy(models["two"], atoms, "pbe")[0], abs=1e-9)
    code, err = relax_cli(capsys, path, "--model", models["two"], "--head", "nope", "--out", tmp_path / "bad.extxyz")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: model ") and "heads: pbe, Default" in err



def test_heo_evaluate_head(models, tmp_path, capsys):
    from jaxmat.heo.evaluate import main

    code = main(["--models", str(models["two"]), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "report"),
                 "--set", "head=nope", "--set", "reference=none"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "head 'nope' is not one of the model's heads: pbe, Default" in err


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (a proxy that refuses every connection), mace-torch's and jaxmat's caches under tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("JAXMAT_COMPILATION_CACHE", str(tmp_path / "jaxmat"))
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # rebuilt with the proxies above
    return tmp_path


def test_foundation_key_offline_is_one_error_line(offline, structure, capsys, x64):
    from jaxmat.forcefields.mace_models import cached_file

    cached = cached_file("small")
    assert str(cached).startswith(str(offline / "xdg" / "mace"))
    code, err = relax_cli(capsys, structure[1], "--model", "small", "--out", offline / "out.extxyz")
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # after mace-torch's "Downloading ..."
    assert code == 2 and len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    err = errors[0]
    assert "foundation model 'small'" in err and str(cached) in err and "pass a .model file with --model PATH" in err
    assert not cached.exists()


def test_foundation_key_cached_then_no_torch(offline, models, structure):
    """A key's file where mace-torch's loader looks is used offline; the JAX run converts it once, and a new
    process loads the key and the file from the cache, and lists neighbours, without importing torch or mace's
    calculators."""
    import shutil

    from jaxmat.forcefields.mace import cache
    from jaxmat.forcefields.mace_models import cached_file
    from jaxmat.forcefields.registry import load_force_field

    cached = cached_file("small-omat-0")
    cached.parent.mkdir(parents=True)
    shutil.copyfile(models["two"], cached)
    assert load_force_field("small-omat-0", "torch", head="pbe").supported_numbers == {8, 12}
    assert not list((offline / "jaxmat" / "mace").glob("*-v*"))
    assert load_force_field("small-omat-0", "jax", head="pbe").head_index == 0
    (entry,) = (offline / "jaxmat" / "mace").glob("*-v*")
    assert entry.name == cache.entry_name(models["two"]) and (entry / cache.DIGEST).exists()
    script = ("import sys, json\nfrom ase.build import bulk\nfrom jaxmat.forcefields.registry import load_force_field\n"
              "from jaxmat.forcefields.neighbors import close_pairs\n"
              f"a = load_force_field('small-omat-0', 'jax', head='pbe')\nb = load_force_field({str(models['two'])!r}, 'jax')\n"
              "atoms = bulk('MgO', 'rocksalt', a=4.2)\nassert len(close_pairs(atoms.positions, atoms.cell.array, True, 3.0)[0])\n"
              "print(json.dumps([a.head, b.head, 'torch' in sys.modules, 'mace.calculators' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["pbe", "Default", False, False]


def test_damaged_or_stale_entries_convert_again(offline, models, monkeypatch):
    from jaxmat.forcefields.mace import cache, convert
    from jaxmat.forcefields.registry import read_mace_file

    path = models["one"]
    calls = []

    def conversion():
        calls.append(1)
        return convert.from_torch(read_mace_file(path))

    config, params = cache.converted(path, conversion)
    entry = offline / "jaxmat" / "mace" / cache.entry_name(path)
    digest = cache.params_digest(params)
    assert cache.converted(path, conversion)[1] is not params and len(calls) == 1  # from the entry
    for damage in (lambda: (entry / cache.DIGEST).write_text("0" * 64),  # parameters not the ones written
                   lambda: (entry / "config.json").write_text("{not json"),
                   lambda: __import__("shutil").rmtree(entry / "params")):
        damage()
        again = cache.converted(path, conversion)
        assert cache.params_digest(again[1]) == digest and (entry / cache.DIGEST).read_text() == digest
    assert len(calls) == 4 and cache.converted(path, conversion) and len(calls) == 4  # rewritten whole
    monkeypatch.setattr(convert, "CONVERTER_VERSION", 99, raising=False)  # a new converter: a new entry
    cache.converted(path, conversion)
    assert len(calls) == 5 and len(list(entry.parent.glob("*-v99-*"))) == 1
    assert not [p for p in entry.parent.iterdir() if ".tmp-" in p.name]
    monkeypatch.setenv("JAXMAT_COMPILATION_CACHE", "0")
    cache.converted(path, conversion)
    assert len(calls) == 6
    assert np.isfinite(config["r_max"])
