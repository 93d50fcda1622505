import numpy as np
import pytest
from ase.build import bulk

from jaxmat.data.structures import from_ase, make_record, validate_structure
from jaxmat.errors import StructureError
from jaxmat.polysrl.graphs.batching import make_polysrl_batch, padded_size
from jaxmat.polysrl.graphs.crystal import crystal_graph
from jaxmat.polysrl.graphs.stoichiometry import stoichiometry_graph


def test_rocksalt_nearest_neighbours():
    record = from_ase(bulk("MgO", "rocksalt", a=4.2), "MgO")
    graph = crystal_graph(record)
    d = graph.distances.reshape(2, 12)
    # 6 nearest neighbours at a/2, then 12 at a/sqrt(2): the 12 kept are 6 + 6 of the second shell
    np.testing.assert_allclose(d[:, :6], 2.1, atol=1e-9)
    np.testing.assert_allclose(d[:, 6:], 4.2 / np.sqrt(2), atol=1e-9)
    assert graph.n_padded == 0
    assert graph.senders.tolist() == [0] * 12 + [1] * 12
    # the 6 nearest of Mg (atom 0) are O (atom 1), whichever image
    assert set(graph.receivers[:6].tolist()) == {1}


def test_padding_edges_when_few_neighbours():
    record = from_ase(bulk("MgO", "rocksalt", a=4.2), "MgO")
    graph = crystal_graph(record, cutoff=2.5)  # only the 6 nearest are within 2.5 Å
    assert graph.n_padded == 12
    d = graph.distances.reshape(2, 12)
    np.testing.assert_allclose(d[:, 6:], 3.5)  # cutoff + 1 Å, as the reference
    assert np.all(graph.receivers.reshape(2, 12)[:, 6:] == 0)


def test_small_triclinic_cell_sees_periodic_images():
    atoms = bulk("Cu", "fcc", a=3.6)  # one atom, primitive cell much smaller than the cutoff
    graph = crystal_graph(from_ase(atoms, "Cu"))
    np.testing.assert_allclose(graph.distances, 3.6 / np.sqrt(2), atol=1e-9)  # 12 nearest images
    assert np.all(graph.receivers == 0)


def test_overlapping_atoms_named():
    record = make_record("dimer", [8, 8], [[0, 0, 0], [0.1, 0, 0]], np.eye(3) * 5)
    with pytest.raises(StructureError, match="'dimer'.*overlap"):
        crystal_graph(record)


def test_nan_coordinates_and_empty_structure():
    record = make_record("bad", [8, 12], [[0, 0, 0], [np.nan, 0, 0]], np.eye(3) * 4)
    with pytest.raises(StructureError, match="'bad'.*atom 1 has non-finite"):
        validate_structure(record)
    with pytest.raises(StructureError, match="'empty' has no atoms"):
        make_record("empty", [], np.zeros((0, 3)), np.eye(3))


def test_stoichiometry_graph_is_complete_with_self_loops():
    graph = stoichiometry_graph("MgCoNiCuZnO5")
    assert len(graph.numbers) == 6
    pairs = set(zip(graph.senders.tolist(), graph.receivers.tolist()))
    assert pairs == {(i, j) for i in range(6) for j in range(6)}
    assert graph.counts.tolist() == [5, 1, 1, 1, 1, 1]  # O (Z=8) first


def test_padded_sizes_are_few():
    sizes = {padded_size(n) for n in range(1, 5000)}
    assert len(sizes) <= 4 * 11
    assert all(padded_size(n) >= n for n in range(1, 5000))
    assert all(padded_size(n) <= 1.25 * n + 8 for n in range(8, 5000))


def test_batch_padding_and_labels():
    records = [from_ase(bulk("MgO", "rocksalt", a=4.2), "a"), from_ase(bulk("MgO", "rocksalt", a=4.3), "b"),
               from_ase(bulk("NaCl", "rocksalt", a=5.6), "c")]
    stoich = [stoichiometry_graph(r.formula) for r in records]
    crystals = [crystal_graph(r) for r in records]
    batch = make_polysrl_batch(stoich, crystals, [r.formula for r in records], batch_size=4)
    assert batch.graph_mask.tolist() == [True, True, True, False, False]
    ids = batch.formula_ids
    assert ids[0] == ids[1] != ids[2]  # polymorphs share a label
    assert len(set(ids[3:].tolist()) | set(ids[:3].tolist())) == 4  # padding rows are unique
    assert int(batch.crystal.n_node[:3].sum()) == 6 and batch.crystal.n_node.sum() == len(batch.crystal.nodes["numbers"])
    assert batch.crystal.n_edge.sum() == len(batch.crystal.senders)
    # padding edges point at padding nodes only
    assert np.all(batch.crystal.senders[72:] >= 6)


def test_merging_equivalent_edges_keeps_the_structure_embedding(x64):
    """Merged periodic images (with multiplicities) give the same structure embedding as all 12 edges."""
    import jax

    from jaxmat.data.sources import load_structures
    from jaxmat.polysrl.encoders import StructureEncoder
    from jaxmat.polysrl.graphs.batching import batch_crystals
    from jaxmat.polysrl.graphs.crystal import merge_equivalent_edges

    records = load_structures("embedded:mp", limit=24).records
    full = [crystal_graph(r) for r in records]
    merged = [merge_equivalent_edges(g, np.float64) for g in full]
    assert sum(len(g.senders) for g in merged) < 0.9 * sum(len(g.senders) for g in full)
    for g, m in zip(full, merged):
        assert m.multiplicity.sum() == len(g.senders)
    encoder = StructureEncoder(hidden=32, param_dtype=np.float64)
    batch_full, batch_merged = batch_crystals(full, 25, np.float64), batch_crystals(merged, 25, np.float64)
    params = encoder.init(jax.random.PRNGKey(0), batch_full)
    np.testing.assert_allclose(encoder.apply(params, batch_merged)[:24], encoder.apply(params, batch_full)[:24], atol=1e-12)
