"""Stoichiometry and crystal graphs (numpy, per structure) and their padded jraph batches."""
