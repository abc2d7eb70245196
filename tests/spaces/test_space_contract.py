"""The space contract for every registered space, and for a third-party space registered here."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from compsearch.spaces import (
    SPACES,
    Dimension,
    Policy,
    Space,
    UnitPolicy,
    list_spaces,
    register_space,
)
from compsearch.testing import SpaceContract

THIRD_PARTY = "test-global-bits"
COMPOSED = ["depth+joint", "quant+prune", "depth+block", f"prune+{THIRD_PARTY}"]
"""Compositions ``a+b`` over disjoint choices (``depth`` ones on the toy ResNet)."""


class GlobalBitsSpace(Space):
    """A third-party space: one weight bit-width and one scheme for every non-head unit."""

    BITS = (4, 8, 32)

    def dimensions(self) -> list[Dimension]:
        return [Dimension("bits", self.BITS, True, group="", field="w_bits"),
                Dimension("scheme", ("symmetric", "asymmetric"), False, group="", field="scheme")]

    def _names(self) -> list[str]:
        return [u.name for u in self.all_units if not u.is_head]

    def decode(self, params: Mapping[str, Any]) -> Policy:
        self._check_params(params)
        return Policy.uniform(self._names(), UnitPolicy(w_bits=params["bits"], scheme=params["scheme"]))

    def encode(self, policy: Policy) -> dict[str, Any]:
        up = policy[self._names()[0]]
        return {"bits": up.w_bits, "scheme": up.scheme}


@pytest.fixture(scope="module", autouse=True)
def _third_party_space() -> Iterator[None]:
    register_space(THIRD_PARTY)(GlobalBitsSpace)
    yield
    SPACES.unregister(THIRD_PARTY)


@pytest.mark.parametrize("space_name", [*list_spaces(), THIRD_PARTY, *COMPOSED])
class TestEverySpace(SpaceContract):
    pass


def test_third_party_space_is_registered_for_this_module() -> None:
    assert THIRD_PARTY in list_spaces()  # registered for this module's tests only
