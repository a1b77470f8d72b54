"""The parts of the learning benchmark, discovered: every module of this package registers its parts with
``@part(...)`` when it is imported, and importing the package imports them all. A new method's part is a new
module here; no shared table lists the parts.

A part is a function ``(Ctx) -> dict`` (its ``rows`` of scores, its ``curves``); its registration says which parts
it reads from (``after``: it starts once they finished or were cached), where it sits in the report (``order``),
how early it starts when several are ready (``start``: lower first), its label in the curve figures (``label``,
for parts whose ``curves`` hold per-seed ``val`` / ``reward`` series) and, for parts trained with RL overrides of
a config, the function giving them per mode (``overrides``: part of the part's cache key).
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

PART_FUNCS: dict[str, Callable] = {}
DEPENDS_ON: dict[str, list[str]] = {}
LABELS: dict[str, str] = {}  # parts whose curves the report draws: part -> label
OVERRIDES: dict[str, Callable[[str], list[str]]] = {}
_ORDER: dict[str, tuple[float, float]] = {}  # part -> (report order, start order)


def part(name: str, *, order: float, start: float, after: tuple[str, ...] | list[str] = (), label: str | None = None,
         overrides: Callable[[str], list[str]] | None = None):
    """Register the decorated function as the part ``name`` (see the module docstring)."""
    def register(func: Callable) -> Callable:
        if name in PART_FUNCS:
            raise ValueError(f"bench part {name!r} registered twice")
        PART_FUNCS[name] = func
        if after:
            DEPENDS_ON[name] = list(after)
        if label is not None:
            LABELS[name] = label
        if overrides is not None:
            OVERRIDES[name] = overrides
        _ORDER[name] = (order, start)
        return func
    return register


def overrides_of(part_name: str, mode: str) -> list[str]:
    """The config overrides a part runs with in a mode ("full", "quick", or either with --set suffixes); part of
    its cache key: a part run with other overrides is rerun."""
    overrides = OVERRIDES.get(part_name)
    return overrides(mode) if overrides else []


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

PARTS = sorted(PART_FUNCS, key=lambda n: _ORDER[n][0])  # the report's order
START_ORDER = sorted(PART_FUNCS, key=lambda n: _ORDER[n][1])  # SFT first: it gates six parts
