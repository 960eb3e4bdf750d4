"""The docstring examples of the public rules run as written (doctest)."""

import doctest

import pytest

from rec_lra_jax import rules


@pytest.mark.parametrize("module", [rules])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8, result  # every public rule has an example
    assert result.failed == 0, result
