"""Plugins: the only code compsearch imports on a user's behalf.

A plugin is a Python module that registers models, datasets, tasks, spaces, criteria,
strategies or metrics with the existing decorators (``register_model``,
``register_dataset``, ``register_task``, ``register_space``, ``register_criterion``,
``register_strategy``, ``register_metric``) when it is imported. Three ways to name one:

* a study spec's ``plugins = ["mypkg.compress_plugins"]``;
* the command line's ``--plugin MODULE`` (repeatable; ``compsearch run`` adds it to the
  run's effective spec, so run.json records it and worker processes import it too);
* an installed distribution's entry point in the group ``compsearch.plugins``
  (``[project.entry-points."compsearch.plugins"] mine = "mypkg.compress_plugins"``): a
  module, imported, or ``"module:function"``, called once with no arguments. They are
  loaded when a spec is loaded or a command that builds things starts;
  ``COMPSEARCH_NO_ENTRY_POINTS=1`` turns them off.

A module name is a dotted import name, never a file path. It is imported from the
installed packages and ``sys.path``; when that finds nothing, the spec's folder and the
current folder are appended to ``sys.path`` and the import is tried once more (spawned
worker processes inherit ``sys.path``). Each module is imported once per process
(Python's module cache); an entry point is loaded once. Nothing else from a spec, a run
folder or a data folder is imported, unpickled or executed: ``compsearch show`` and
``compsearch report`` of a finished run import no plugin at all unless the report has
to evaluate something, and then say so.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from compsearch.errors import ConfigError

ENTRY_POINT_GROUP = "compsearch.plugins"
NO_ENTRY_POINTS_ENV = "COMPSEARCH_NO_ENTRY_POINTS"
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

_imported: dict[str, str] = {}  # module -> where it was named ("plugins[0]", "--plugin", ...)
_entry_points: dict[str, dict[str, str]] = {}  # entry point name -> {"value", "dist"}


class PluginError(ConfigError):
    """A plugin cannot be named or imported; the message says where it was named."""


def check_module_name(name: Any, where: str) -> str:
    """``name`` when it is a dotted module name, else :class:`PluginError` naming ``where``."""
    if not isinstance(name, str) or not MODULE_RE.match(name):
        raise PluginError(f"{where}={name!r} is not a module name; give a dotted import name such as "
                          f"'mypkg.compress_plugins' (not a file path): a module on sys.path, in the spec's "
                          f"folder or installed with pip")
    return name


def _import(name: str, where: str, search: Sequence[Path]) -> None:
    try:
        importlib.import_module(name)
        return
    except ModuleNotFoundError as e:
        if e.name != name and not name.startswith(f"{e.name}."):  # a module the plugin itself imports
            raise PluginError(f"{where}={name!r}: importing it failed: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise PluginError(f"{where}={name!r}: importing it failed: {type(e).__name__}: {e}") from e
    extra = [str(p) for p in dict.fromkeys(Path(p).resolve() for p in search) if str(p) not in sys.path]
    sys.path.extend(extra)
    importlib.invalidate_caches()
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        looked = ", ".join(repr(str(p)) for p in search)
        raise PluginError(f"{where}={name!r}: no module of that name on sys.path or in {looked}; install the "
                          f"package, set PYTHONPATH, or put {name.split('.')[0]}.py beside the spec ({e})") from None
    except Exception as e:
        raise PluginError(f"{where}={name!r}: importing it failed: {type(e).__name__}: {e}") from e


def import_plugins(modules: Iterable[str], *, where: str = "plugins", spec_dir: str | Path | None = None) -> list[str]:
    """Import every module of ``modules`` (see the module docstring); returns their names.

    Args:
        modules: dotted module names.
        where: how they were named, for messages (``"plugins"`` -> ``plugins[0]``,
            ``"--plugin"``).
        spec_dir: the spec's folder, searched after ``sys.path``.

    Raises:
        PluginError: a name that is not a module name, a module that cannot be found, or
            one whose import raises (the message names ``where`` and the error).
    """
    names = list(modules)
    search = [Path(spec_dir)] if spec_dir is not None else []
    search.append(Path.cwd())
    for i, name in enumerate(names):
        label = where if where.startswith("--") else f"{where}[{i}]"
        check_module_name(name, label)
        if name not in _imported:
            _import(name, label, search)
            _imported[name] = label
    return names


def load_entry_points() -> dict[str, dict[str, str]]:
    """Load every ``compsearch.plugins`` entry point once per process (none when
    ``COMPSEARCH_NO_ENTRY_POINTS`` is set); returns ``name -> {"value", "dist"}`` of those loaded.

    Raises:
        PluginError: an entry point whose import or call raises (named with its distribution).
    """
    if os.environ.get(NO_ENTRY_POINTS_ENV):
        return dict(_entry_points)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _entry_points:
            continue
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
        try:
            loaded = ep.load()
            if callable(loaded) and ep.attr:
                loaded()
        except Exception as e:
            raise PluginError(f"entry point {ep.name!r} = {ep.value!r} of {origin} (group {ENTRY_POINT_GROUP!r}) "
                              f"failed: {type(e).__name__}: {e}; fix or uninstall it, or set "
                              f"{NO_ENTRY_POINTS_ENV}=1") from e
        _entry_points[ep.name] = {"value": ep.value, "dist": origin}
    return dict(_entry_points)


def load_plugins(modules: Iterable[str] = (), *, entry_points: bool = True) -> dict[str, Any]:
    """For Python users: import ``modules`` and (with ``entry_points``) the installed
    ``compsearch.plugins`` entry points, as the command line does; returns :func:`loaded_plugins`."""
    if entry_points:
        load_entry_points()
    import_plugins(modules, where="modules")
    return loaded_plugins()


def loaded_plugins() -> dict[str, Any]:
    """What this process imported: ``{"modules": [...], "entry_points": {name: {...}}}`` (run.json)."""
    return {"modules": list(_imported), "entry_points": dict(_entry_points)}


__all__ = [
    "ENTRY_POINT_GROUP",
    "NO_ENTRY_POINTS_ENV",
    "PluginError",
    "check_module_name",
    "import_plugins",
    "load_entry_points",
    "load_plugins",
    "loaded_plugins",
]
