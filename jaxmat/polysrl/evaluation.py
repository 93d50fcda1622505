"""Composition-property evaluation of a stoichiometry encoder or a baseline, k-fold CV with Matbench's
splits; the command is ``python -m jaxmat.evaluate`` (:mod:`jaxmat.evaluate`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from jaxmat.errors import JaxmatInputError
from jaxmat.files import write_atomically, write_json
from jaxmat.polysrl.metrics import (
    classification_metrics,
    regression_metrics,
    summarize_folds,
)
from jaxmat.polysrl.tasks import load_task, matbench_folds

log = logging.getLogger("jaxmat.evaluate")


def encoder_config(workdir):
    """The model config of a training directory, or the default config without one."""
    from jaxmat.polysrl.api import load_model_config
    from jaxmat.polysrl.config import ModelConfig

    return ModelConfig() if workdir is None else load_model_config(workdir)


def make_model(name: str, workdir, kind: str, protocol: str, epochs: int, seed: int):
    """A fresh model with fit(formulas, targets) / predict(formulas)."""
    if name == "magpie-rf":
        from jaxmat.polysrl.baselines import MagpieRandomForest

        return MagpieRandomForest(kind, seed)
    if name == "roost":
        from jaxmat.polysrl.baselines import RoostBaseline

        return RoostBaseline(kind, seed, epochs=epochs)
    import jax

    from jaxmat.polysrl.probe import ProbeConfig, StoichiometryProbe

    if name == "pretrained":
        if workdir is None:
            raise JaxmatInputError("--model pretrained needs --workdir (a training directory)")
        from jaxmat.polysrl.api import load_encoder

        embedder = load_encoder(workdir)
        encoder, params = embedder.module, embedder.params
    elif name == "random-init":
        from jaxmat.polysrl.graphs.batching import batch_stoichiometry
        from jaxmat.polysrl.graphs.stoichiometry import stoichiometry_graph
        config = encoder_config(workdir)
        encoder = config.stoichiometry_encoder()
        example = batch_stoichiometry([stoichiometry_graph("NaCl")], 2, np.dtype(config.jnp_dtype))
        params = encoder.init(jax.random.PRNGKey(seed), example)["params"]
    else:
        raise JaxmatInputError(f"unknown model {name!r}: pretrained, random-init, magpie-rf or roost")
    return StoichiometryProbe(encoder, params, kind, protocol, ProbeConfig(epochs=epochs, seed=seed))


def plot_results(out: Path, kind: str, targets, predictions, title: str) -> Path:
    from jaxmat.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    if kind == "regression":
        ax.scatter(targets, predictions, s=6, alpha=0.5)
        low, high = float(min(targets.min(), predictions.min())), float(max(targets.max(), predictions.max()))
        ax.plot([low, high], [low, high], "k--", lw=1)
        ax.set_xlabel("target")
        ax.set_ylabel("predicted (out of fold)")
        path = out / "parity.png"
    else:
        order = np.argsort(-predictions)
        truth = targets[order].astype(bool)
        tpr = np.concatenate([[0], np.cumsum(truth) / max(truth.sum(), 1)])
        fpr = np.concatenate([[0], np.cumsum(~truth) / max((~truth).sum(), 1)])
        ax.plot(fpr, tpr)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        path = out / "roc.png"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate(task: str, model: str, workdir=None, protocol: str = "representation", folds: int = 5, out=None,
             epochs: int = 300, task_type: str | None = None, seed: int = 0) -> dict:
    """Cross-validated metrics of a model on a task; writes results under ``out`` when given."""
    data = load_task(task, task_type)
    splits = matbench_folds(len(data.formulas), folds)
    metric_fn = regression_metrics if data.kind == "regression" else classification_metrics
    formulas = np.asarray(data.formulas, dtype=object)
    predictions = np.full(len(formulas), np.nan)
    per_fold = []
    started = time.time()
    model_config = encoder_config(workdir if model in ("pretrained", "random-init") else None)
    for fold, (train, test) in enumerate(splits):
        with model_config.scope():  # the encoder's precision, for this evaluation only
            fitted = make_model(model, workdir, data.kind, protocol, epochs, seed + fold).fit(list(formulas[train]), data.targets[train])
            predictions[test] = fitted.predict(list(formulas[test]))
        per_fold.append(metric_fn(data.targets[test], predictions[test]))
        log.info("fold %d/%d: %s", fold + 1, folds, ", ".join(f"{k} {v:.4f}" for k, v in per_fold[-1].items()))
    results = {"task": data.name, "task_type": data.kind, "model": model, "protocol": protocol if model not in ("magpie-rf", "roost") else None,
               "folds": folds, "epochs": epochs if model != "magpie-rf" else None, "n_rows": len(formulas),
               "skipped_rows": len(data.skipped), "seconds": time.time() - started}
    results.update(summarize_folds(per_fold))
    if out is not None:
        out = Path(out)
        write_json(out / "results.json", results, indent=2)
        rows = "".join(f"{f},{t:.8g},{p:.8g}\n" for f, t, p in zip(formulas, data.targets, predictions))
        write_atomically(out / "predictions.csv", lambda tmp: tmp.write_text("formula,target,prediction\n" + rows))
        title = f"{data.name} - {model}" + (f" ({protocol})" if model not in ("magpie-rf", "roost") else "")
        plot_results(out, data.kind, data.targets, predictions, title)
    return results
