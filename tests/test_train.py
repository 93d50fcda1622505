"""Training end to end on a small slice of the embedded data: metrics, checkpoints, resume, reload."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxmat.config import apply_overrides, load_config
from jaxmat.errors import ConfigError
from jaxmat.polysrl.trainer import run_training

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "data.source=embedded:heo", "data.limit=40", "train.batch_size=16", "model.hidden=16",
    "model.n_samples=4", "train.lr=1e-3",
]


def small_config(epochs, extra=()):
    return apply_overrides(load_config(REPO / "configs/polysrl.yaml"), SMALL + [f"train.epochs={epochs}", *extra])


def losses(workdir):
    return [json.loads(line)["loss"] for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    history = run_training(small_config(3), workdir, progress=False)
    return workdir, history


def test_outputs_and_metrics(trained):
    workdir, history = trained
    assert [row["epoch"] for row in history] == [1, 2, 3]
    for key in ("loss", "contrastive", "kl", "c", "b", "mean_sigma"):
        assert all(np.isfinite(row[key]) for row in history), key
    assert history[-1]["step"] == 3 * 3  # 40 rows / 16 per batch = 3 batches per epoch
    assert history[-1]["loss"] < history[0]["loss"]  # lr 1e-3 on a tiny set: the loss goes down
    assert (workdir / "training.png").stat().st_size > 1000
    saved = yaml.safe_load((workdir / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 3 and saved["model"]["hidden"] == 16
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2", "3"]


def test_resume_continues_with_identical_losses(trained, tmp_path):
    workdir, history = trained
    run_training(small_config(1), tmp_path, progress=False)
    resumed = run_training(small_config(3), tmp_path, progress=False)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in history]
    assert [r["c"] for r in resumed] == [r["c"] for r in history]


def test_killed_run_resumes_from_last_checkpoint(trained, tmp_path):
    """Kill the CLI mid-run (SIGKILL after the first checkpoint), rerun the same command, compare."""
    workdir, history = trained
    command = [sys.executable, "-m", "jaxmat.train", "--config", str(REPO / "configs/polysrl.yaml"), "--workdir", str(tmp_path),
               "--no-progress"] + [x for item in SMALL + ["train.epochs=3"] for x in ("--set", item)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "1").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(losses(tmp_path))
    assert done_before < 3, "the run finished before it could be interrupted"
    subprocess.run(command, check=True, capture_output=True, env=env)
    assert losses(tmp_path) == [r["loss"] for r in history]


def test_reload_and_embed(trained):
    from jaxmat.polysrl import load_encoder

    encoder = load_encoder(trained[0])
    mu, sigma = encoder.embed(["MgCoNiCuZnO5", "Fe2O3", "Fe2O3"])
    assert mu.shape == sigma.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(mu, axis=1), 1.0, rtol=1e-5)
    assert np.all(sigma > 0)
    np.testing.assert_array_equal(mu[1], mu[2])


def test_embed_cli(trained, tmp_path):
    from jaxmat.embed import main

    out = tmp_path / "emb.csv"
    assert main(["--workdir", str(trained[0]), "Fe2O3", "NaCl", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("Fe2O3,")
    assert len(lines[1].split(",")) == 2 + 2 * 16
    assert main(["--workdir", str(trained[0]), "Fe2O3", "Qq3"]) == 2  # unknown element: clear error, exit 2


def test_config_errors(tmp_path, trained):
    with pytest.raises(ConfigError, match="unknown model option"):
        run_training(small_config(1, ["model.hiden=3"]), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="different 'model' config"):
        run_training(small_config(4, ["model.hidden=32"]), trained[0], progress=False)
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_deterministic_and_corrected_variants_train(tmp_path):
    history = run_training(small_config(1, ["model.probabilistic=false"]), tmp_path / "det", progress=False)
    assert np.isfinite(history[0]["loss"]) and history[0]["kl"] == 0.0
    history = run_training(small_config(1, ["model.reduction=mean", "model.kl=log_std"]), tmp_path / "mean", progress=False)
    assert np.isfinite(history[0]["loss"]) and np.isfinite(history[0]["kl"])


def test_uncertainty_analysis_cli(trained, tmp_path):
    from jaxmat.analyze_uncertainty import main

    out = tmp_path / "u"
    assert main(["--workdir", str(trained[0]), "--out", str(out), "--bootstrap", "50"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = (out / "polymorph_sigma.csv").read_text().splitlines()
    assert summary["n_structures"] == 40 and len(rows) == summary["n_formulas"] + 1
    assert -1.0 <= summary["spearman_rho"] <= 1.0 or np.isnan(summary["spearman_rho"])
    assert (out / "sigma_by_polymorphs.png").stat().st_size > 1000


def test_evaluate_pretrained_encoder(trained, tmp_path):
    from jaxmat.polysrl.evaluation import evaluate

    csv = tmp_path / "t.csv"
    rows = ["NaCl", "KCl", "LiF", "MgO", "CaO", "SrO", "BaO", "ZnS", "CdSe", "GaAs"]
    csv.write_text("formula,target\n" + "".join(f"{f},{len(f)}\n" for f in rows))
    results = evaluate(str(csv), "pretrained", trained[0], "representation", folds=2, out=tmp_path / "out", epochs=3)
    assert results["task_type"] == "regression" and len(results["mae"]["folds"]) == 2
    assert (tmp_path / "out" / "parity.png").exists()


def test_shipped_configs_resolve():
    from jaxmat.polysrl.config import resolve_config

    for name in ("polysrl.yaml", "polysrl_deterministic.yaml"):
        resolved = resolve_config(load_config(REPO / "configs" / name))
        assert resolved["model"]["probabilistic"] == (name == "polysrl.yaml")


def test_kill_between_checkpoint_and_metrics_line_loses_nothing(trained, tmp_path):
    """The epoch's checkpoint is on disk but its metrics line is not (a kill between the two): the resume
    takes the line from the checkpoint, continues after it (epochs 1-2 not trained again) and ends with
    the uninterrupted run's numbers."""
    workdir, history = trained
    run_training(small_config(2), tmp_path, progress=False)
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text(lines[0] + "\n")  # epoch 2's line never written
    saved_at = (tmp_path / "checkpoints" / "2").stat().st_mtime_ns
    resumed = run_training(small_config(3), tmp_path, progress=False)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in history]
    assert json.loads(metrics.read_text().splitlines()[1]) == json.loads(lines[1])
    assert (tmp_path / "checkpoints" / "2").stat().st_mtime_ns == saved_at  # resumed, not retrained
