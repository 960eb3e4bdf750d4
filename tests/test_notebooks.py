"""The notebooks in notebooks/: each .ipynb is its jupytext text twin (percent format), and
each runs from top to bottom in smoke mode (REC_LRA_SMOKE=1: synthetic data, a few steps)
in a fresh kernel, as `make notebooks` runs them."""

import glob
import os

import jupytext
import nbclient
import nbformat
import pytest

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "notebooks")
NAMES = sorted(os.path.splitext(os.path.basename(p))[0]
               for p in glob.glob(os.path.join(NOTEBOOKS, "*.py")))


def test_every_notebook_has_its_text_twin():
    assert NAMES == ["quickstart", "resnet", "rules_optax"]
    ipynbs = sorted(os.path.splitext(os.path.basename(p))[0]
                    for p in glob.glob(os.path.join(NOTEBOOKS, "*.ipynb")))
    assert ipynbs == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_notebook_equals_its_text_twin(name):
    text = jupytext.read(os.path.join(NOTEBOOKS, f"{name}.py"))
    notebook = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]
    assert cells(notebook) == cells(text), (
        f"notebooks/{name}.ipynb and notebooks/{name}.py differ: edit the .py and run "
        f"`make sync-notebooks`.")
    for cell in notebook.cells:  # committed without outputs, so diffs stay reviewable
        assert not cell.get("outputs"), f"notebooks/{name}.ipynb has outputs: clear them"
    assert any("parameters" in c.metadata.get("tags", ()) for c in notebook.cells)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_smoke_mode(name, tmp_path, monkeypatch):
    monkeypatch.setenv("REC_LRA_SMOKE", "1")
    monkeypatch.setenv("REC_LRA_WORKDIRS", str(tmp_path))
    notebook = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()  # raises CellExecutionError naming the cell that failed
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                   for o in c.get("outputs", ()))
    assert "jax " in text and "device(s)" in text  # the device line
    if name != "rules_optax":
        assert "| rec_lra |" in text and "| bp |" in text  # the comparison table
