"""compsearch: multi-objective search for neural-network compression policies."""

from compsearch.errors import (
    CompsearchError,
    ConfigError,
    DataError,
    FineTuneDiverged,
    ModelError,
    PolicyError,
    SpecError,
    UnknownNameError,
)
from compsearch.spaces import (
    Policy,
    Space,
    Unit,
    UnitPolicy,
    discover_units,
    get_space,
    list_spaces,
    register_space,
)

__version__ = "0.1.0"

__all__ = [
    "CompsearchError",
    "ConfigError",
    "DataError",
    "FineTuneDiverged",
    "ModelError",
    "Policy",
    "PolicyError",
    "Space",
    "SpecError",
    "Unit",
    "UnitPolicy",
    "UnknownNameError",
    "discover_units",
    "get_space",
    "list_spaces",
    "register_space",
]
