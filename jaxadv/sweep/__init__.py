"""Robustness grids at scale: models × data sets × attacks × eps × seeds, in one command.

``jaxadv sweep CONFIG --out DIR`` expands a YAML/JSON config (or a built-in one such as ``smoke``)
into *cells* (model, data set, attack with its eps grid, seed), runs them over every local device
(or every device of a ``jax.distributed`` job), writes each finished cell atomically, skips finished
cells when re-run, and ends in a report. ``--num-shards N --shard-index I`` splits the cells for
independent processes; ``jaxadv merge`` combines their folders; ``jaxadv report`` rewrites the report.

Example:
    >>> from jaxadv import sweep
    >>> cfg = sweep.load_config("smoke")
    >>> len(cfg.cells()) > 0
    True
"""

from __future__ import annotations

import importlib
from typing import Any

from jaxadv.sweep.config import Cell, ConfigError, SweepConfig, builtin_names, load_config
from jaxadv.sweep.merge import MergeOutcome, merge  # eager: the submodule shares the name
from jaxadv.sweep.storage import CorruptResultsError, SweepDir, SweepError

# The rest is imported on first use: the runner pulls in the device programs, which reading,
# merging and reporting never need (``from jaxadv.sweep import write_report`` stays light).
_LAZY = {
    "load_sweep": "jaxadv.sweep.report",
    "write_report": "jaxadv.sweep.report",
    "SweepOutcome": "jaxadv.sweep.runner",
    "run_sweep": "jaxadv.sweep.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxadv.sweep' has no attribute {name!r}")


__all__ = [
    "Cell",
    "ConfigError",
    "CorruptResultsError",
    "MergeOutcome",
    "SweepConfig",
    "SweepDir",
    "SweepError",
    "SweepOutcome",
    "builtin_names",
    "load_config",
    "load_sweep",
    "merge",
    "run_sweep",
    "write_report",
]
