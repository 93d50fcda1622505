"""Composition baselines: Magpie features (matminer ElementProperty 'magpie') + scikit-learn random forest."""

from __future__ import annotations

import numpy as np

from jaxmat.errors import JaxmatInputError

_MAGPIE_CACHE: dict[str, np.ndarray] = {}


def magpie_features(formulas) -> np.ndarray:
    """(n, 132) Magpie element-property statistics of each formula (cached per formula: featurizing is slow)."""
    try:
        from matminer.featurizers.composition import ElementProperty
    except ImportError:
        raise JaxmatInputError("the magpie-rf baseline needs matminer: pip install 'jaxmat[baselines]'") from None
    import warnings

    from pymatgen.core import Composition

    missing = [f for f in dict.fromkeys(formulas) if f not in _MAGPIE_CACHE]
    if missing:
        featurizer = ElementProperty.from_preset("magpie", impute_nan=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for formula in missing:
                _MAGPIE_CACHE[formula] = np.asarray(featurizer.featurize(Composition(formula)), float)
    return np.stack([_MAGPIE_CACHE[f] for f in formulas])


class MagpieRandomForest:
    """Random forest on Magpie features (500 trees, seeded)."""

    def __init__(self, kind: str, seed: int = 0, n_estimators: int = 500):
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        model = RandomForestClassifier if kind == "classification" else RandomForestRegressor
        self.kind, self.model = kind, model(n_estimators=n_estimators, random_state=seed, n_jobs=-1)

    def fit(self, formulas, targets):
        self.model.fit(magpie_features(formulas), targets)
        return self

    def predict(self, formulas) -> np.ndarray:
        features = magpie_features(formulas)
        if self.kind == "classification":
            return self.model.predict_proba(features)[:, 1]
        return self.model.predict(features)


class RoostBaseline:
    """Roost (Goodall & Lee 2020) from aviary-models, trained with a plain loop: AdamW lr 3e-4,
    L1 on standardised targets (regression) or cross-entropy (classification), matscholar200 elements."""

    def __init__(self, kind: str, seed: int = 0, epochs: int = 100, batch_size: int = 128, lr: float = 3e-4):
        self.kind, self.seed, self.epochs, self.batch_size, self.lr = kind, seed, epochs, batch_size, lr

    def _loader(self, formulas, targets, shuffle):
        try:
            import pandas as pd
            import torch
            from aviary.roost.data import CompositionData, collate_batch
        except ImportError:
            raise JaxmatInputError("the roost baseline needs aviary-models: pip install 'jaxmat[baselines]'") from None
        frame = pd.DataFrame({"material_id": np.arange(len(formulas)), "composition": list(formulas),
                              "target": np.asarray(targets, int if self.kind == "classification" else float)})
        data = CompositionData(frame, task_dict={"target": self.kind}, inputs="composition", identifiers=("material_id", "composition"))
        generator = torch.Generator().manual_seed(self.seed)
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate_batch, generator=generator)

    def fit(self, formulas, targets):
        import torch
        from aviary.roost.model import Roost

        torch.manual_seed(self.seed)
        targets = np.asarray(targets, float)
        self.mean, self.std = (targets.mean(), targets.std() or 1.0) if self.kind == "regression" else (0.0, 1.0)
        self.model = Roost(robust=False, n_targets=[1 if self.kind == "regression" else 2], elem_embedding="matscholar200",
                           task_dict={"target": self.kind})
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=1e-6)
        loader = self._loader(formulas, targets, shuffle=True)
        self.model.train()
        for _ in range(self.epochs):
            for inputs, batch_targets, *_ in loader:
                output = self.model(*inputs)[0]
                if self.kind == "regression":
                    loss = torch.nn.functional.l1_loss(output[:, 0], (batch_targets[0][:, 0] - self.mean) / self.std)
                else:
                    loss = torch.nn.functional.cross_entropy(output, batch_targets[0].reshape(-1))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return self

    def predict(self, formulas) -> np.ndarray:
        import torch

        self.model.eval()
        outputs = []
        with torch.no_grad():
            for inputs, *_ in self._loader(formulas, np.zeros(len(formulas)), shuffle=False):
                outputs.append(self.model(*inputs)[0].numpy())
        output = np.concatenate(outputs)
        if self.kind == "classification":
            return torch.softmax(torch.tensor(output), dim=1).numpy()[:, 1]
        return output[:, 0] * self.std + self.mean
