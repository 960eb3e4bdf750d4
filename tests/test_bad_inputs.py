"""Every known bad input, through the real command line (experiments/bad_inputs.py's table):
exit code 1, one message naming the cause, no traceback, nothing lost or written."""

import os

import pytest

from experiments import bad_inputs

pytestmark = pytest.mark.slow  # the command line in subprocesses


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return bad_inputs.finished_run(str(tmp_path_factory.mktemp("finished") / "run"))


@pytest.mark.parametrize("case", bad_inputs.CASES, ids=[c.name for c in bad_inputs.CASES])
def test_bad_input_fails_clearly_and_loses_nothing(tmp_path, finished, case):
    result = bad_inputs.run_case(case, finished, str(tmp_path))
    assert result["exit"] == case.exit, result
    assert result["matches"], (case.message, result["error"] or result["message"])
    assert not result["traceback"], result
    if case.keeps_workdir:
        assert result["unchanged"], "the workdir changed"
    assert not result["tfds_written"], "something was written under ~/tensorflow_datasets"
    if case.workdir == "fresh" and case.exit and case.keeps_workdir:
        assert not os.path.exists(tmp_path / "workdir" / "config.json")
    assert bad_inputs.passed(case, result)
