"""Every ``Example:`` in a docstring of the package runs and prints what it says (the docstrings
are documentation users copy from; one that drifted from the code is a bug)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import jaxadv

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(jaxadv.__path__, "jaxadv.")
    if not m.name.endswith("__main__")  # importing it runs the command line
)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(
        mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True
    )
    assert res.failed == 0, f"{res.failed} of {res.attempted} docstring examples of {name} failed"
