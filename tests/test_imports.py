"""`import compsearch` stays light: the heavy optional backends are imported lazily."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("ray", "nni", "botorch", "gpytorch", "optuna_integration", "matplotlib", "plotly")


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(filter(None, out.stdout.strip().split(",")))


def test_import_compsearch_is_light() -> None:
    assert _loaded_after("import compsearch") == set()


def test_listing_strategies_and_spaces_is_light() -> None:
    code = (
        "import compsearch\n"
        "from compsearch.search.registry import list_strategies\n"
        "from compsearch.spaces import list_spaces\n"
        "assert list_strategies() and list_spaces()"
    )
    assert _loaded_after(code) == set()
