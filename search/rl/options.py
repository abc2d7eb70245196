"""Strategy options from a spec or ``get_strategy(..., **options)`` routed onto config and parts.

A strategy built from parts (allocator, low level, rewards, prior, proposal sources,
curriculum, goals) takes as options: a part by its name (an object, e.g. ``rewards=RealRewards()``),
a field of its frozen config (``startup_trials=5``), or a short *alias* for one field of one part
(``k=5`` sets ``EnsembleAllocation.k``, ``pool=32`` sets ``AgentProposals.n``), so a TOML spec can
tune the parts with plain values. A source alias set to 0 drops that source (``mutations=0``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from compsearch.errors import ConfigError, check_keywords


def _set_source(where: str, sources: tuple[Any, ...], kind: str, field: str, value: Any) -> tuple[Any, ...]:
    found = [s for s in sources if type(s).__name__ == kind]
    if not found:
        have = [type(s).__name__ for s in sources]
        raise ConfigError(f"{where}: option for {kind}.{field}={value!r} has no effect, the strategy's sources are {have}")
    if value == 0 and field == "n":
        return tuple(s for s in sources if type(s).__name__ != kind)
    return tuple(replace(s, **{field: value}) if type(s).__name__ == kind else s for s in sources)


def route_options(
    where: str, config: Any, parts: dict[str, Any], options: Mapping[str, Any], aliases: Mapping[str, tuple[str, str]],
    fix: str = "",
) -> tuple[Any, dict[str, Any]]:
    """``(config, parts)`` with ``options`` applied (module docstring).

    Args:
        where: the strategy's name for messages.
        config: a frozen dataclass of plain settings.
        parts: part name -> part (``sources``: a tuple of sources).
        options: the options given.
        aliases: alias -> ``(part name, field)``; for ``sources`` the field is ``"<SourceType>.<field>"``.
        fix: appended to the message of an alias whose part lacks its field (which variants have it).

    Raises:
        TypeError: an option that is none of these (the message lists what is allowed).
        ConfigError: an alias whose part is not in this strategy.
    """
    config_fields = {f.name for f in fields(config)}
    check_keywords(f"strategy {where!r}", dict(options), config_fields | set(parts) | set(aliases))
    parts = dict(parts)
    plain = {k: v for k, v in options.items() if k in config_fields}
    for key, value in options.items():
        if key in parts and key not in config_fields:
            parts[key] = tuple(value) if key == "sources" else value
    for key, value in options.items():
        if key not in aliases or key in parts or key in config_fields:
            continue
        part, field = aliases[key]
        if part == "sources":
            kind, _, name = field.partition(".")
            parts[part] = _set_source(where, parts[part], kind, name, value)
        elif field not in {f.name for f in fields(parts[part])}:
            raise ConfigError(f"strategy {where!r}: option {key}={value!r} sets {field!r}, which {type(parts[part]).__name__} "
                              f"does not have; pass {part}= a part that has it{f', or {fix}' if fix else ''}")
        else:
            parts[part] = replace(parts[part], **{field: value})
    return replace(config, **plain), parts
