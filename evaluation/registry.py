"""Recommenders by name, each registered where it is defined; eval_test.py builds the one its command line names.

    @register_recommender("trm", help="the TRM alone (--model_path = a train_trm.py folder)", hf_model=False)
    class TRMRecommender:
        @classmethod
        def from_cli(cls, request: BuildRequest) -> "TRMRecommender": ...

An entry says:

* ``source``: ``"model"`` (built from --model_path / --model_root, picked with ``--recommender NAME``) or
  ``"baseline"`` (no model, picked with ``--baseline NAME``);
* ``options``: a dataclass of the recommender's own flags (``field(default=..., metadata={"help": ..., "choices":
  ...})``; a ``bool`` field is a store_true flag). Recommenders may declare the same field (with the same default):
  it is one flag, whose help names each of them (`add_recommender_options`);
* ``presets(parsed) -> {option: default}``: defaults worked out from a first parse of the command line (DeepRec's
  --episode_config reads a training YAML); flags given on the command line still win (`preset_defaults`);
* ``hf_model``: --model_path is a transformers model folder, checked before anything loads (False for a TRM folder);
* ``decodes``: the recommender decodes item lists as text, so --decoding applies to it.

The constructor is the class's ``from_cli(request)`` (`BuildRequest`). Registration happens on import: evaluation/
registers its own recommenders (`evaluation.recommenders`) and imports nothing above it; `cli.recommenders` imports
the method packages, each of which imports the module that defines its recommender.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SOURCES = ("model", "baseline")


@dataclass
class BuildRequest:
    """What a recommender's ``from_cli`` is given."""

    args: Any  # the parsed command line (argparse.Namespace): data, scoring, generation and every recommender's flags
    data: Any  # evaluation.predictions.LoadedSplit: the (subset of the) split, its catalog, every split
    model_path: str | None  # --model_path (or the --model_root checkpoint); None for a baseline
    require_year: bool | None  # --require_year (None: decided from the catalog)
    provenance: dict  # recorded in metrics.json: from_cli adds what identifies the recommender
    options: Any = None  # the entry's options dataclass, filled from ``args`` (None when it declares none)


@dataclass(frozen=True)
class RecommenderEntry:
    name: str
    cls: type
    help: str
    source: str = "model"
    options: type | None = None
    presets: Callable[[Any], dict] | None = None
    hf_model: bool = True
    decodes: bool = False

    def build(self, request: BuildRequest):
        if self.options is not None:
            request.options = self.options(**{f.name: getattr(request.args, f.name)
                                              for f in dataclasses.fields(self.options)})
        return self.cls.from_cli(request)


_ENTRIES: dict[str, RecommenderEntry] = {}


def register_recommender(name: str, *, help: str, source: str = "model", options: type | None = None,
                         presets: Callable[[Any], dict] | None = None, hf_model: bool = True,
                         decodes: bool = False):
    """Class decorator: register the class under ``name`` (see the module docstring for the fields)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")

    def register(cls):
        if not callable(getattr(cls, "from_cli", None)):
            raise TypeError(f"{cls.__name__}: a registered recommender needs a from_cli(request) classmethod")
        old = _ENTRIES.get(name)
        # the same class imported again (a reloaded module) replaces itself; another class may not take the name
        if old is not None and (old.cls.__module__, old.cls.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"recommender {name!r} is registered already ({old.cls.__module__}.{old.cls.__qualname__})")
        _ENTRIES[name] = RecommenderEntry(name, cls, help, source, options, presets, hf_model, decodes)
        return cls

    return register


def recommender_entries(source: str | None = None) -> list[RecommenderEntry]:
    """The registered entries (of one source when given), in registration order."""
    return [e for e in _ENTRIES.values() if source is None or e.source == source]


def get_recommender(name: str) -> RecommenderEntry:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise KeyError(f"no recommender {name!r} registered (registered: {', '.join(_ENTRIES) or 'none'})") from None


def names_help(source: str) -> str:
    """``"name: help; name: help"`` of one source's entries, for an option's help."""
    return "; ".join(f"{e.name}: {e.help}" for e in recommender_entries(source))


def _flag_type(hint):
    """The argparse type of an options field: its annotation, without ``| None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_recommender_options(group, entries: list[RecommenderEntry] | None = None) -> None:
    """Every entry's option fields as flags on ``group`` (an argparse parser or group); a field declared by several
    entries is one flag, its help prefixed by their names (``recpo / deeprec: ...``)."""
    flags: dict[str, tuple[dataclasses.Field, Any, list[str]]] = {}
    for entry in recommender_entries() if entries is None else entries:
        if entry.options is None:
            continue
        hints = typing.get_type_hints(entry.options)
        for f in dataclasses.fields(entry.options):
            if f.name in flags:
                first, _, owners = flags[f.name]
                if first.default != f.default:
                    raise ValueError(f"--{f.name}: {owners[0]} defaults to {first.default!r}, {entry.name} to "
                                     f"{f.default!r}; a shared flag needs one default")
                owners.append(entry.name)
            else:
                flags[f.name] = (f, hints[f.name], [entry.name])
    for name, (f, hint, owners) in flags.items():
        kw: dict = {"default": f.default, "help": f"{' / '.join(owners)}: {f.metadata.get('help', '')}"}
        if hint is bool:
            kw["action"] = "store_true"
        else:
            kw["type"] = _flag_type(hint)
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        group.add_argument(f"--{name}", **kw)


def preset_defaults(parsed) -> dict:
    """The defaults every entry's ``presets`` derives from a first parse (later entries win on a shared key)."""
    out: dict = {}
    for entry in recommender_entries():
        if entry.presets is not None:
            out.update(entry.presets(parsed) or {})
    return out
