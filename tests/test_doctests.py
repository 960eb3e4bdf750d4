"""The docstring examples of the public rules run as written (doctest)."""

import doctest

import pytest

from rec_lra_jax import models, resnet, rules


@pytest.mark.parametrize("module,least", [(rules, 8), (models, 10), (resnet, 10)])
def test_docstring_examples(module, least):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= least, result  # every public rule has an example
    assert result.failed == 0, result
