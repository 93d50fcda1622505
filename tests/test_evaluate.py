"""Property-prediction evaluation: metrics by hand, tasks and splits, probe training, polymorph counting."""

import json

import numpy as np
import pytest

from jaxmat.errors import JaxmatInputError
from jaxmat.polysrl.metrics import (
    classification_metrics,
    regression_metrics,
    roc_auc,
    summarize_folds,
)
from jaxmat.polysrl.tasks import load_task, matbench_folds


def test_regression_metrics_by_hand():
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.0, 5.0])
    assert m["mae"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 1) / 4))
    assert m["r2"] == pytest.approx(1 - 2.25 / 5.0)


def test_classification_metrics_by_hand():
    y, p = [1, 0, 1, 0, 1], [0.9, 0.8, 0.4, 0.1, 0.7]
    # positives 0.9, 0.4, 0.7 against negatives 0.8, 0.1: 0.9 beats both, 0.4 and 0.7 beat 0.1 only -> 4 of 6
    assert roc_auc(y, p) == pytest.approx(4 / 6)
    m = classification_metrics(y, p)
    assert m["accuracy"] == pytest.approx(3 / 5)  # predicted 1,1,0,0,1
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)  # ties count one half
    summary = summarize_folds([{"mae": 1.0}, {"mae": 3.0}])
    assert summary["mae"] == {"mean": 2.0, "std": 1.0, "folds": [1.0, 3.0]}


def test_bundled_tasks_and_type_detection():
    gap, metal = load_task("expt_gap"), load_task("expt_is_metal")
    assert gap.kind == "regression" and metal.kind == "classification"
    assert len(gap.formulas) + len(gap.skipped) == 4604 and len(metal.formulas) + len(metal.skipped) == 4921
    assert set(np.unique(metal.targets)) == {0.0, 1.0}


def test_csv_errors_and_skipped_rows(tmp_path):
    good = tmp_path / "t.csv"
    good.write_text("formula,target\nFe2O3,1.5\nXx3,2.0\nNaCl,abc\nMgO,7.8\n")
    task = load_task(str(good))
    assert task.formulas == ["Fe2O3", "MgO"] and [n for n, _ in task.skipped] == [3, 4]
    bad = tmp_path / "bad.csv"
    bad.write_text("composition,y\nFe2O3,1\n")
    with pytest.raises(JaxmatInputError, match=r"lacks column\(s\) \['formula', 'target'\]"):
        load_task(str(bad))
    with pytest.raises(JaxmatInputError, match="not binary"):
        load_task(str(good), "classification")
    with pytest.raises(JaxmatInputError, match="fewer than the 5 folds"):
        matbench_folds(len(task.formulas), 5)


def test_matbench_split_is_reproducible():
    a, b = matbench_folds(100), matbench_folds(100)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    tests = np.sort(np.concatenate([t for _, t in a]))
    np.testing.assert_array_equal(tests, np.arange(100))
    from sklearn.model_selection import KFold

    reference = list(KFold(5, shuffle=True, random_state=18012019).split(np.arange(100)))
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, reference))


def test_probe_learns_a_tiny_task():
    """Representation probe on a random-init encoder fits a simple function of composition."""
    from jaxmat.polysrl.evaluation import make_model

    formulas = ["NaCl", "KCl", "LiF", "MgO", "CaO", "SrO", "BaO", "ZnS", "CdSe", "GaAs", "InP", "AlN", "SiC", "TiO2", "ZrO2", "HfO2"]
    targets = np.array([float(len(f)) for f in formulas])
    model = make_model("random-init", None, "regression", "representation", epochs=300, seed=0).fit(formulas, targets)
    error = np.abs(model.predict(formulas) - targets).mean()
    assert error < 0.5 * np.abs(targets - targets.mean()).mean()


def test_evaluate_cli_small(tmp_path):
    from jaxmat.evaluate import main

    csv = tmp_path / "t.csv"
    rows = ["NaCl", "KCl", "LiF", "MgO", "CaO", "SrO", "BaO", "ZnS", "CdSe", "GaAs"]
    csv.write_text("formula,target\n" + "".join(f"{f},{i % 2}\n" for i, f in enumerate(rows)))
    out = tmp_path / "out"
    assert main(["--task", str(csv), "--model", "random-init", "--folds", "2", "--epochs", "2", "--out", str(out), "--protocol", "transfer"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task_type"] == "classification" and len(results["roc_auc"]["folds"]) == 2
    assert (out / "roc.png").exists() and len((out / "predictions.csv").read_text().splitlines()) == 11


def test_polymorph_counter_on_known_polymorphs():
    from ase.build import bulk

    from jaxmat.data.structures import from_ase
    from jaxmat.polysrl.uncertainty import count_polymorphs, spearman_with_bootstrap

    zincblende = bulk("ZnS", "zincblende", a=5.41)
    wurtzite = bulk("ZnS", "wurtzite", a=3.82, c=6.26)
    zincblende_supercell = zincblende * (2, 1, 1)  # the same polymorph in a bigger cell
    rocksalt = bulk("MgO", "rocksalt", a=4.2)
    records = [from_ase(a, str(i)) for i, a in enumerate([zincblende, wurtzite, zincblende_supercell, rocksalt])]
    assert count_polymorphs(records) == {"ZnS": (3, 2), "MgO": (1, 1)}
    rho, low, high = spearman_with_bootstrap([1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 6, 5], n_boot=200)
    assert rho == pytest.approx(1 - 6 * (0 + 1 + 1 + 0 + 1 + 1) / (6 * 35))
    assert low <= rho <= high


def test_magpie_random_forest_baseline():
    from jaxmat.polysrl.baselines import MagpieRandomForest, magpie_features

    features = magpie_features(["NaCl", "Fe2O3"])
    assert features.shape == (2, 132) and np.all(np.isfinite(features))
    formulas = ["NaCl", "KCl", "LiF", "MgO", "CaO", "SrO", "BaO", "ZnS", "CdSe", "GaAs", "InP", "AlN"]
    targets = np.array([8.5, 8.4, 13.6, 7.8, 7.1, 5.9, 4.8, 3.7, 1.7, 1.4, 1.3, 6.0])
    model = MagpieRandomForest("regression", n_estimators=50).fit(formulas, targets)
    assert np.abs(model.predict(formulas) - targets).mean() < np.abs(targets - targets.mean()).mean()


def test_roost_baseline_trains_and_predicts():
    from jaxmat.polysrl.baselines import RoostBaseline

    formulas = ["NaCl", "KCl", "LiF", "MgO", "CaO", "SrO", "BaO", "ZnS", "CdSe", "GaAs", "InP", "AlN"]
    targets = np.array([8.5, 8.4, 13.6, 7.8, 7.1, 5.9, 4.8, 3.7, 1.7, 1.4, 1.3, 6.0])
    model = RoostBaseline("regression", epochs=40, batch_size=4).fit(formulas, targets)
    prediction = model.predict(formulas)
    assert prediction.shape == (12,) and np.all(np.isfinite(prediction))
    assert np.abs(prediction - targets).mean() < np.abs(targets - targets.mean()).mean()
    classifier = RoostBaseline("classification", epochs=5, batch_size=4).fit(formulas, (targets > 5).astype(float))
    probability = classifier.predict(formulas)
    assert np.all((probability >= 0) & (probability <= 1))
