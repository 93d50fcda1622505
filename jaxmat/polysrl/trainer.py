"""PolySRL training loop: config resolution, resumable epochs with orbax checkpoints, metrics and plot.

The command is ``python -m jaxmat.train`` (:mod:`jaxmat.train`); :func:`run_training` is the same from
Python, in the model config's precision scope (``ModelConfig.scope()``): no global switch needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import jax
import numpy as np
import yaml
from tqdm import tqdm

from jaxmat.errors import ConfigError, JaxmatInputError
from jaxmat.files import write_atomically
from jaxmat.polysrl.config import ModelConfig, resolve_config
from jaxmat.polysrl.dataset import PolySRLDataset, build_dataset
from jaxmat.polysrl.model import init_params
from jaxmat.polysrl.training import TrainState, make_optimizer, make_train_step

log = logging.getLogger("jaxmat.train")


class NonFiniteLossError(JaxmatInputError):
    """The loss became NaN or infinite; training stopped before saving the epoch."""


def _check_resumable(workdir: Path, config: dict) -> None:
    """Refuse to resume a run whose model, data or batching differ from the saved config."""
    saved_path = workdir / "config.yaml"
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text())
    for section, keys in (("model", None), ("data", None), ("train", ("batch_size", "lr", "weight_decay", "max_grad_norm")), ("seed", None)):
        old, new = saved.get(section), config.get(section)
        if keys is not None:
            old, new = {k: old.get(k) for k in keys}, {k: new.get(k) for k in keys}
        if old != new:
            raise ConfigError(
                f"{workdir} holds a run with a different {section!r} config ({old} vs {new}); use a new --workdir"
            )


def data_fingerprint(dataset: PolySRLDataset) -> str:
    """SHA-256 of the training rows in order: ids, formulas and crystal graphs (atoms, edges, distances)."""
    digest = hashlib.sha256()
    for row_id, formula, crystal in zip(dataset.ids, dataset.formulas, dataset.crystals):
        digest.update(f"{row_id}\0{formula}\0".encode())
        for array in (crystal.numbers, crystal.senders, crystal.receivers, crystal.distances, crystal.multiplicity):
            if array is not None:
                digest.update(np.ascontiguousarray(np.asarray(array, np.float64)).tobytes())
    return digest.hexdigest()


def run_versions() -> dict:
    """Versions that fix a run's numbers: a resume under others would not reproduce an uninterrupted run."""
    import jaxlib
    import optax

    import jaxmat

    return {"jaxmat": jaxmat.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__, "optax": optax.__version__}


def _check_checkpoint(workdir: Path, meta: dict, epoch: int, fingerprint: str, n_rows: int) -> None:
    """Refuse to resume from a checkpoint written for other data (or another data order) or by other versions."""
    saved = meta.get("data")
    if saved and saved.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{workdir} holds a run trained on different data or a different data order ({saved.get('rows')} rows, "
            f"fingerprint {str(saved.get('fingerprint'))[:12]}) than this one ({n_rows} rows, fingerprint {fingerprint[:12]}): "
            f"the source files changed; resuming after epoch {epoch} would mix two runs. Use a new --workdir"
        )
    versions, now = meta.get("versions"), run_versions()
    if versions and versions != now:
        changed = ", ".join(f"{k} {versions.get(k)} -> {now.get(k)}" for k in sorted(set(versions) | set(now))
                            if versions.get(k) != now.get(k))
        raise ConfigError(
            f"{workdir} was trained up to epoch {epoch} by other package versions ({changed}): a resumed run would not "
            f"reproduce an uninterrupted one. Use a new --workdir, or the versions it was written with"
        )


PADDING_HORIZON = 100  # epochs whose batches fix the padded shape


def epoch_chunks(n_rows: int, epoch: int, batch_size: int, data_key) -> list[np.ndarray]:
    """Row indices of each batch of one epoch, in the order fixed by the data key and epoch number."""
    order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), n_rows))
    return [order[start : start + batch_size] for start in range(0, n_rows, batch_size)]


def run_padding(dataset: PolySRLDataset, batch_size: int, data_key, epochs: int):
    """One padded shape for every batch of the run: one compilation, and (since it depends on the
    data order alone, over at least PADDING_HORIZON epochs) the same shape on resume."""
    horizon = max(epochs, PADDING_HORIZON)
    return dataset.padding([c for e in range(1, horizon + 1) for c in epoch_chunks(len(dataset), e, batch_size, data_key)])


def _read_metrics(path: Path, last_epoch: int) -> list[dict]:
    """Metrics lines of epochs <= last_epoch (drops lines written after the last checkpoint)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= last_epoch]


def _write_metrics(path: Path, rows: list[dict]) -> None:
    if jax.process_index() != 0:  # several processes: the first one writes
        return
    write_atomically(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in rows)))


def run_training(config: dict, workdir, progress: bool = True, devices=None) -> list[dict]:
    """Train (or resume) into ``workdir``; returns the metrics of every epoch so far. A float64 model
    config runs in its ModelConfig.scope() (the process-wide JAX setting is left alone).
    ``devices``: data-parallel over these (default: every device of every process, jax.devices());
    one device runs the plain jitted step. The losses are the same numbers either way."""
    config = resolve_config(config)
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) > 1:
        from jaxmat.polysrl.parallel import check_divisible

        check_divisible(int(config["train"]["batch_size"]), len(devices))
    with ModelConfig.from_dict(config["model"]).scope():
        return _train(config, workdir, progress, devices)


def _train(config: dict, workdir, progress: bool, devices: list) -> list[dict]:
    from jaxmat.polysrl.checkpoint import (
        checkpoint_manager,
        restore_checkpoint,
        save_checkpoint,
    )
    from jaxmat.polysrl.plots import plot_training

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_resumable(workdir, config)
    if jax.process_index() == 0:
        write_atomically(workdir / "config.yaml", lambda tmp: tmp.write_text(yaml.safe_dump(config, sort_keys=False)))

    model_config = ModelConfig.from_dict(config["model"])
    dtype = np.dtype(model_config.jnp_dtype)
    train_cfg, data_cfg = config["train"], config["data"]
    batch_size = int(train_cfg["batch_size"])

    dataset = build_dataset(data_cfg, progress=progress, dtype=dtype)
    log.info("dataset: %s", dataset.summary())
    if len(dataset) < 2:
        raise JaxmatInputError(f"only {len(dataset)} usable structures: need at least 2 to train")

    root = jax.random.PRNGKey(config["seed"])
    init_key, data_key, noise_key = jax.random.split(root, 3)
    optimizer = make_optimizer(float(train_cfg["lr"]), train_cfg["max_grad_norm"], float(train_cfg["weight_decay"]))
    params = init_params(model_config, dataset.batch(np.arange(min(batch_size, len(dataset))), batch_size, dtype), init_key)
    state = TrainState(params, optimizer.init(params), np.zeros((), np.int64))
    rng = {"data": jax.random.key_data(data_key), "noise": jax.random.key_data(noise_key)}

    if len(devices) > 1:  # replicated on every device (of every process), saved and restored as such
        from jaxmat.polysrl.parallel import DataParallel, make_mesh, replicate

        state, rng = replicate((state, rng), make_mesh(devices))
    else:  # every leaf on the one device: a checkpoint saved from several devices restores onto it
        state, rng = jax.device_put((state, rng), devices[0])
    manager = checkpoint_manager(workdir, int(train_cfg["keep_checkpoints"]))
    restored = restore_checkpoint(manager, {"train": state, "rng": rng})
    fingerprint = data_fingerprint(dataset)
    start_epoch = 0
    if restored is not None:
        saved, meta = restored
        _check_checkpoint(workdir, meta, int(meta["epoch"]), fingerprint, len(dataset))
        state, rng = TrainState(*saved["train"]), saved["rng"]
        start_epoch = int(meta["epoch"])
        log.info("resuming %s after epoch %d (step %d)", workdir, start_epoch, int(state.step))
    data_key, noise_key = jax.random.wrap_key_data(rng["data"]), jax.random.wrap_key_data(rng["noise"])
    metrics_path = workdir / "metrics.jsonl"
    history = _read_metrics(metrics_path, start_epoch)
    if restored is not None and meta.get("metrics") and (not history or history[-1]["epoch"] < start_epoch):
        # killed between the checkpoint and its metrics line: the checkpoint carries the line
        log.warning("metrics.jsonl lacked epoch %d; restored it from the checkpoint", start_epoch)
        history.append(meta["metrics"])
    _write_metrics(metrics_path, history)

    epochs = int(train_cfg["epochs"])
    if len(devices) > 1:
        horizon = range(1, max(epochs, PADDING_HORIZON) + 1)
        chunks = [c for e in horizon for c in epoch_chunks(len(dataset), e, batch_size, data_key)]
        run_step = DataParallel(model_config, optimizer, dataset, batch_size, dtype, chunks, devices).step
    else:
        train_step = jax.jit(make_train_step(model_config, optimizer), donate_argnums=0)
        padding = run_padding(dataset, batch_size, data_key, epochs)

        def run_step(state, chunk, step_key):
            return train_step(state, dataset.batch(chunk, batch_size, dtype, padding), step_key)
    n_batches = -(-len(dataset) // batch_size)
    for epoch in range(start_epoch + 1, epochs + 1):
        started = time.time()
        sums: dict[str, float] = {}
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", disable=not progress, file=sys.stderr, leave=False)
        for chunk in epoch_chunks(len(dataset), epoch, batch_size, data_key):
            step_key = jax.random.fold_in(noise_key, int(state.step))
            state, metrics = run_step(state, chunk, step_key)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not np.isfinite(metrics["total"]):
                kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "no epoch was saved"
                raise NonFiniteLossError(
                    f"training of {workdir} stopped: the loss is {metrics['total']} at epoch {epoch}, step {int(state.step)} "
                    f"(terms: {', '.join(f'{k} {v:.4g}' for k, v in metrics.items())}); {kept}. "
                    f"Lower train.lr or train.max_grad_norm (in a new --workdir) or check the data")
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{metrics['total']:.4g}", sigma=f"{metrics.get('mean_sigma', 0):.3g}")
            bar.update()
        bar.close()
        row = {"epoch": epoch, "step": int(state.step)}
        row.update({k: v / n_batches for k, v in sums.items() if k not in ("c", "b")})
        row.update({"loss": row.pop("total"), "loss_sum": sums["total"], "c": metrics["c"], "b": metrics["b"]})
        row["seconds"] = time.time() - started
        save_checkpoint(manager, epoch, {"train": state, "rng": rng}, {"epoch": epoch, "step": int(state.step), "metrics": row,
                         "data": {"fingerprint": fingerprint, "rows": len(dataset)}, "versions": run_versions()})
        history.append(row)
        _write_metrics(metrics_path, history)
        log.info(
            "epoch %d/%d  loss %.6g  contrastive %.6g  kl %.4g  c %.4f  b %.4f  mean sigma %.4g  (%.1f s)",
            epoch, epochs, row["loss"], row["contrastive"], row["kl"], row["c"], row["b"], row.get("mean_sigma", 0.0), row["seconds"],
        )
    if history and jax.process_index() == 0:
        plot_training(history, workdir / "training.png")
    return history
