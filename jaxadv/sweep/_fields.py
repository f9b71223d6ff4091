"""Field checks of sweep configs: the one error type and the parsers of integers, strings, key
sets, labels and lists that :mod:`jaxadv.sweep.config` and the task modules beside it share."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """The sweep config is invalid; the message names the offending entry and what to do."""


def _int(v: Any, where: str, *, lo: int = 0, none_ok: bool = False) -> int | None:
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where}: must be an integer >= {lo}, got {v!r}")
    return int(v)


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{where}: must be a non-empty string, got {v!r}")
    return v.strip()


def _keys(entry: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


#: Longest label; longer ones are shortened and given a hash of the original (cell ids name files).
MAX_LABEL = 48


def _label(s: str) -> str:
    """A label as it appears in cell ids and file names: characters outside ``[A-Za-z0-9._-]``
    become ``-``, runs of ``_`` become one (``__`` separates the parts of a cell id), no leading
    or trailing ``-._``, and at most :data:`MAX_LABEL` characters (a longer label keeps its start
    and gains 8 hex digits of its SHA-256)."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", s)
    out = re.sub(r"_{2,}", "_", out).strip("-._") or "x"
    if len(out) > MAX_LABEL:
        tag = hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        out = f"{out[: MAX_LABEL - 9].rstrip('-._')}-{tag}"
    return out


def is_label(s: Any) -> bool:
    """True when ``s`` is already a normalised label (what :func:`_label` returns)."""
    return isinstance(s, str) and _label(s) == s


def _as_list(v: Any, where: str) -> list:
    if v is None:
        raise ConfigError(f"{where}: missing (give at least one entry)")
    items = [v] if isinstance(v, (str, Mapping)) else v
    if not isinstance(items, Sequence) or not items:
        raise ConfigError(f"{where}: must be a non-empty list, got {v!r}")
    return list(items)


def _unique(entries: list[dict], what: str) -> None:
    # Labels name files: compared without case (case-insensitive file systems) and after
    # _label has replaced the characters a file name cannot hold.
    seen: dict[str, int] = {}
    for i, e in enumerate(entries):
        key = e["label"].casefold()
        if key in seen:
            raise ConfigError(
                f"{what}[{i}] and {what}[{seen[key]}] share the label {e['label']!r} (labels are "
                "compared ignoring case, after replacing characters other than A-Z a-z 0-9 . _ -); "
                "give one of them a distinct 'label'"
            )
        seen[key] = i
