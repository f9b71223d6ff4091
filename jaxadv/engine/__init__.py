"""The evaluation engine: one way to run an attack over a data set and an eps grid.

:func:`evaluate` streams fixed, padded batches, shards them over a device mesh with ``shard_map``,
runs the eps grid (vmapped, or cascaded on survivors) and returns an :class:`Evaluation` of
per-example arrays with one summary (:func:`summary_rows`).
"""

from jaxadv.engine.evaluate import Evaluation, EvaluationStopped, check_eps, evaluate, norm_name
from jaxadv.engine.summary import eps_label, summary_rows

__all__ = [
    "Evaluation",
    "EvaluationStopped",
    "check_eps",
    "eps_label",
    "evaluate",
    "norm_name",
    "summary_rows",
]
