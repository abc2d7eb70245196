from __future__ import annotations

import json

import pytest

from compsearch.errors import PolicyError
from compsearch.spaces import IDENTITY, POLICY_VERSION, Policy, UnitPolicy


def test_unit_policy_defaults_are_identity() -> None:
    up = UnitPolicy()
    assert up == IDENTITY and up.is_identity
    assert not up.quantized and not up.act_quantized and not up.pruned
    assert UnitPolicy(w_bits=4).quantized and UnitPolicy(a_bits=8).act_quantized
    assert not UnitPolicy(w_bits=16).quantized  # 16 and 32 = float, not quantized


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"w_bits": 0}, r"w_bits=0 is invalid: bits must be an integer in 1\.\.32"),
        ({"a_bits": 33}, r"a_bits=33 is invalid"),
        ({"w_bits": 4.5}, r"w_bits=4\.5 is invalid"),
        ({"keep": 1.5}, r"keep=1\.5 is invalid: the kept fraction must be in \(0, 1\]"),
        ({"keep": 0.0}, r"keep=0\.0 is invalid"),
        ({"keep": float("nan")}, r"keep=nan is invalid"),
        ({"scheme": "log"}, r"scheme='log' is unknown; allowed: \['symmetric', 'asymmetric'\]"),
        ({"granularity": "group"}, r"granularity='group' is unknown"),
        ({"structure": "block"}, r"structure='block' is unknown"),
    ],
)
def test_unit_policy_validation(fields: dict, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        UnitPolicy(**fields)


def test_policy_is_immutable_mapping_and_json_round_trips() -> None:
    p = Policy({"b": UnitPolicy(w_bits=4, keep=0.5), "a": {"w_bits": 8, "scheme": "asymmetric"}})
    assert list(p) == ["a", "b"] and len(p) == 2
    assert p["a"] == UnitPolicy(w_bits=8, scheme="asymmetric")
    assert p.get_or_identity("c") == IDENTITY
    data = json.loads(p.to_json())
    assert data["version"] == 1 and POLICY_VERSION == 2  # version 1: no removed blocks
    assert data["units"]["b"]["keep"] == 0.5
    q = Policy.from_json(p.to_json())
    assert q == p and hash(q) == hash(p) and q.key == p.key
    with pytest.raises(TypeError):
        p["a"] = UnitPolicy()  # type: ignore[index]
    assert Policy({"a": UnitPolicy(keep=1)})["a"].keep == 1.0  # int keep normalised to float


def test_policy_errors() -> None:
    p = Policy({"conv9": UnitPolicy(w_bits=4)})
    with pytest.raises(PolicyError, match=r"names unit\(s\) \['conv9'\] that the model does not have"):
        p.validate_for(["conv1", "fc"])
    with pytest.raises(PolicyError, match=r"version=7 is not supported; this compsearch reads versions \[1, 2\]"):
        Policy.from_dict({"version": 7, "units": {}})
    with pytest.raises(PolicyError, match=r"unknown field\(s\) \['bits'\]"):
        Policy({"a": {"bits": 4}})
    with pytest.raises(PolicyError, match="cannot be parsed"):
        Policy.from_json("{not json")
