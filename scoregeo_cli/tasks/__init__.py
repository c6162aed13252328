"""Experiment tasks: each turns a composed config into rows of metrics in a run folder.

A task's ``prepare(cfg)`` builds everything a run needs before it computes and so makes
every refusal (one sentence) before anything is written; ``run(cfg, run_dir, prepared)``
computes. ``scoregeo run`` calls both; a sweep calls ``prepare`` for every job first.
"""

from __future__ import annotations

import dataclasses


def astuple_shallow(prepared) -> tuple:
    """The fields of a ``prepare`` result, in order, as they are (not deep-copied)."""
    return tuple(getattr(prepared, f.name) for f in dataclasses.fields(prepared))


def run_methods_shown(methods: dict, ends, plan, generator) -> dict:
    """``methods.run_methods``, one method at a time in the same order (so with the same
    draws from ``generator``), under a progress bar of the methods; the bars a method opens
    (its solver's) say which method they work for."""
    from scoregeo_cli.methods import run_methods
    from scoregeo_cli.io import progress

    out = {}
    with progress.bar(len(methods), "methods", "method") as bar:
        for name, method in methods.items():
            bar.set_postfix_str(name, refresh=False)
            with progress.label(name):
                out.update(run_methods({name: method}, ends, plan, generator))
            bar.update(1)
    return out
