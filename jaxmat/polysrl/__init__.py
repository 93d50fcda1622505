"""PolySRL: probabilistic stoichiometry representation learning (Lee et al., NeurIPS 2023 AI4Science).

A formula becomes a Gaussian embedding (mu, sigma) aligned with structure embeddings of its
polymorphs by a sampled soft contrastive loss.
"""


def __getattr__(name):  # lazy: keep `import jaxmat.polysrl.loss` light
    if name in ("StoichiometryEmbedder", "load_encoder", "import_reference_checkpoint"):
        from jaxmat.polysrl import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["StoichiometryEmbedder", "load_encoder", "import_reference_checkpoint"]
