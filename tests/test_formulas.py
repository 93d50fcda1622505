import numpy as np
import pytest

from jaxmat.data.formulas import parse_formula, reduced_formula
from jaxmat.errors import FormulaError


def test_counts_as_written_sorted_by_atomic_number():
    parsed = parse_formula("Ag(W3Br7)2")
    assert parsed.numbers.tolist() == [35, 47, 74]  # Br, Ag, W
    assert parsed.counts.tolist() == [14.0, 1.0, 6.0]


def test_fractional_and_non_reduced_counts_kept():
    assert parse_formula("Li0.5CoO2").counts.tolist() == [0.5, 2.0, 1.0]  # Li, O, Co
    assert parse_formula("K12O16V4").counts.tolist() == [16.0, 12.0, 4.0]


@pytest.mark.parametrize(
    "formula, message",
    [("", "empty"), ("   ", "empty"), ("Xx2O", "unknown element 'Xx'"), ("Fe2O3)", "malformed"), ("h2o", "malformed")],
)
def test_bad_formulas_name_the_input(formula, message):
    with pytest.raises(FormulaError, match=message) as info:
        parse_formula(formula)
    assert repr(formula) in str(info.value) or formula.strip() == ""


def test_element_without_embedding():
    with pytest.raises(FormulaError, match="no matscholar embedding"):
        parse_formula("Og2")  # oganesson: no matscholar vector


def test_reduced_formula_of_sites():
    assert reduced_formula([8, 12, 8, 12]) == "MgO"
    assert reduced_formula(np.array([26, 26, 8, 8, 8])) == "Fe2O3"
