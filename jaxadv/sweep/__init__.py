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

from jaxadv.sweep.config import Cell, ConfigError, SweepConfig, builtin_names, load_config
from jaxadv.sweep.merge import MergeOutcome, merge
from jaxadv.sweep.report import load_sweep, write_report
from jaxadv.sweep.runner import SweepOutcome, run_sweep
from jaxadv.sweep.storage import CorruptResultsError, SweepDir, SweepError

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
