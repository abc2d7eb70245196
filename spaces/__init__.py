"""Model introspection, policies and the pluggable compression spaces."""

from compsearch.spaces import builtin as _builtin  # noqa: F401  (registers the built-in spaces)
from compsearch.spaces.base import SPACES, Dimension, Space, get_space, list_spaces, register_space
from compsearch.spaces.blocks import check_grouping
from compsearch.spaces.builtin import TiedSpace
from compsearch.spaces.policy import IDENTITY, POLICY_VERSION, Policy, UnitPolicy
from compsearch.spaces.units import (
    Discovery,
    Unit,
    coverage,
    discover,
    discover_units,
    group_blocks,
    uncovered_parameters,
)

__all__ = [
    "IDENTITY",
    "POLICY_VERSION",
    "SPACES",
    "Dimension",
    "Policy",
    "Space",
    "TiedSpace",
    "Unit",
    "UnitPolicy",
    "Discovery",
    "check_grouping",
    "coverage",
    "discover",
    "discover_units",
    "get_space",
    "group_blocks",
    "list_spaces",
    "register_space",
    "uncovered_parameters",
]
