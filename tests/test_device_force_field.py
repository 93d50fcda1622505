"""The device loop's contract with a force field (jaxmat.forcefields.base.DeviceForceField): the force fields
that claim it meet it, and one that claims device support without it is refused naming what is missing."""

import pytest

from jaxmat.forcefields.base import DEVICE_MEMBERS, DeviceForceField, cutoff_of, require_device_force_field
from jaxmat.forcefields.classical import lennard_jones
from jaxmat.forcefields.mace.forcefield import MACEJax
from jaxmat.relax.device_loop import DeviceRelaxation
from jaxmat.relax.optimizers import FIRE


class HalfDone:
    """Claims the device loop with a model and species but no cutoff and no device_settings."""

    supports_device_loop = True
    supported_numbers = None

    def device_model(self):
        return lennard_jones().device_model()

    def device_species(self, numbers):
        return lennard_jones().device_species(numbers)


def loop(force_field):
    return DeviceRelaxation(force_field, FIRE(), 0.05, 10, 64, 4, 0.5, 8, 100.0)


def test_device_force_fields_meet_the_protocol():
    lj = lennard_jones(cutoff=3.0)
    assert isinstance(lj, DeviceForceField) and cutoff_of(lj) == 3.0 and hash(lj.device_settings()) is not None
    assert all(hasattr(MACEJax, name) for name in DEVICE_MEMBERS)
    assert loop(lj).limits["model_cutoff"] == 3.0


def test_a_force_field_missing_members_is_refused_by_name():
    assert not isinstance(HalfDone(), DeviceForceField)
    with pytest.raises(TypeError, match=r"HalfDone cannot run in the device loop: it has no cutoff, device_settings"):
        loop(HalfDone())


def test_a_force_field_without_device_support_is_refused():
    lj = lennard_jones()
    lj.supports_device_loop = False
    with pytest.raises(TypeError, match="supports_device_loop is False"):
        require_device_force_field(lj)
