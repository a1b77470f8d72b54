"""Finds every recommender eval_test.py can build: evaluation's own (`evaluation.recommenders`) and each method's.

Nothing is listed here: every package under ``methods/`` is imported, and a method package imports the module that
defines its recommender, which registers itself (`evaluation.registry.register_recommender`). A new method with
its own recommender edits no shared file.
"""
from __future__ import annotations

import importlib
import pkgutil


def discover_recommenders() -> None:
    """Import evaluation's recommenders and every method package, so that all of them are registered."""
    import evaluation.recommenders  # noqa: F401 -- text, trm and the baselines register on import
    import methods

    for info in pkgutil.iter_modules(methods.__path__, prefix="methods."):
        importlib.import_module(info.name)
