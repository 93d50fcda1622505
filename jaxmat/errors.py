"""Exceptions raised for bad user input. Each message names the offending entry."""


class JaxmatInputError(ValueError):
    """Base class: an input (formula, structure, file, config) is not usable."""


class FormulaError(JaxmatInputError):
    """A chemical formula is empty, malformed or names an unknown element."""


class StructureError(JaxmatInputError):
    """A structure is empty, has overlapping atoms or non-finite coordinates."""


class ConfigError(JaxmatInputError):
    """A config key or value is not valid."""


class ForceFieldError(RuntimeError):
    """A force field raised something other than a numerical failure or an out-of-memory error: the run stops,
    naming the structures of the failing call."""
