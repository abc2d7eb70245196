"""Exceptions raised by compsearch.

Every error derives from :class:`CompsearchError`; where a builtin fits, the
subclass derives from it too (``ValueError`` for bad values, ``TypeError`` for
bad types), so callers may catch either. Messages name the parameter, the value
received, what is allowed, and the fix.
"""

from __future__ import annotations


class CompsearchError(Exception):
    """Base class of every error raised by compsearch."""


class ConfigError(CompsearchError, ValueError):
    """A parameter, option or configuration value is invalid."""


class UnknownNameError(ConfigError):
    """A registry was asked for a name it does not hold."""


class DuplicateNameError(ConfigError):
    """A registry was asked to register a name it already holds."""


class PolicyError(ConfigError):
    """A compression policy is invalid or does not fit the model."""


class ModelError(ConfigError):
    """A model cannot be compressed (e.g. it has no compressible layer)."""


class DataError(ConfigError):
    """Data does not fit the model or a dataset cannot be read."""


class SpecError(ConfigError):
    """A study spec is invalid; the message names the key path."""


class FineTuneDiverged(CompsearchError, RuntimeError):
    """Fine-tuning produced a non-finite loss; the candidate is a failed trial."""


def check_keywords(where: str, given: dict[str, object], allowed: set[str] | frozenset[str]) -> None:
    """Raise ``TypeError`` naming every keyword in ``given`` that is not ``allowed``."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise TypeError(
            f"{where} got unexpected keyword argument(s) {unknown}; "
            f"allowed: {sorted(allowed)}"
        )


def check_int_at_least(where: str, obj: object, minimum: dict[str, int]) -> None:
    """Raise :class:`ConfigError` unless every attribute ``name`` of ``obj`` in ``minimum`` is
    an integer (not a bool) >= its bound; the message reads ``<where>.<name>=<value> must be
    an integer >= <bound>``."""
    for name, low in minimum.items():
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{where}.{name}={value!r} must be an integer >= {low}")
