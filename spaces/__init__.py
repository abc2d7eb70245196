"""Model introspection, policies and the pluggable compression spaces."""

from compsearch.spaces import builtin as _builtin  # noqa: F401  (registers the built-in spaces)
from compsearch.spaces.base import (
    SPACES,
    Dimension,
    Space,
    check_space_name,
    get_space,
    list_spaces,
    register_space,
)
from compsearch.spaces.blocks import check_grouping
from compsearch.spaces.builtin import TiedSpace
from compsearch.spaces.compose import ComposedSpace
from compsearch.spaces.depth import (
    DEPTH_FIELD,
    DepthSpace,
    RemovableBlock,
    check_blocks,
    removable_blocks,
)
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
    "DEPTH_FIELD",
    "IDENTITY",
    "POLICY_VERSION",
    "SPACES",
    "ComposedSpace",
    "DepthSpace",
    "Dimension",
    "Policy",
    "Space",
    "RemovableBlock",
    "TiedSpace",
    "Unit",
    "UnitPolicy",
    "Discovery",
    "check_blocks",
    "check_grouping",
    "check_space_name",
    "coverage",
    "discover",
    "discover_units",
    "get_space",
    "group_blocks",
    "list_spaces",
    "register_space",
    "removable_blocks",
    "uncovered_parameters",
]
