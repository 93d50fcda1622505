"""Composition baselines: Magpie features (matminer ElementProperty 'magpie') + scikit-learn random forest."""

from __future__ import annotations

import numpy as np

from jaxmat.errors import JaxmatInputError


def magpie_features(formulas) -> np.ndarray:
    """(n, 132) Magpie element-property statistics of each formula."""
    try:
        from matminer.featurizers.composition import ElementProperty
    except ImportError:
        raise JaxmatInputError("the magpie-rf baseline needs matminer: pip install 'jaxmat[baselines]'") from None
    import warnings

    from pymatgen.core import Composition

    featurizer = ElementProperty.from_preset("magpie", impute_nan=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([featurizer.featurize(Composition(f)) for f in formulas], float)


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
