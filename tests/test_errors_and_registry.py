from __future__ import annotations

from dataclasses import dataclass

import pytest

from compsearch.errors import (
    ConfigError,
    DuplicateNameError,
    UnknownNameError,
    check_int_at_least,
    check_keywords,
)
from compsearch.registry import Registry


def test_registry_is_loud() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)

    @reg.register("b")
    def _b() -> None: ...

    assert reg.names() == ["a", "b"] and "a" in reg and len(reg) == 2
    with pytest.raises(DuplicateNameError, match="widget 'a' is already registered"):
        reg.register("a", 2)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; registered: \['a', 'b'\]"):
        reg.get("c")
    reg.unregister("a")
    assert reg.names() == ["b"]


def test_check_int_at_least_and_keywords() -> None:
    @dataclass
    class Cfg:
        k: int = 1
        n: int = 0

    check_int_at_least("Cfg", Cfg(), {"k": 1, "n": 0})
    with pytest.raises(ConfigError, match=r"Cfg\.k=0 must be an integer >= 1"):
        check_int_at_least("Cfg", Cfg(k=0), {"k": 1})
    with pytest.raises(ConfigError, match=r"Cfg\.n=True must be an integer >= 0"):
        check_int_at_least("Cfg", Cfg(n=True), {"n": 0})
    with pytest.raises(TypeError, match=r"f\(\) got unexpected keyword argument\(s\) \['x'\]"):
        check_keywords("f()", {"x": 1, "y": 2}, {"y"})
