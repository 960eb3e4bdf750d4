"""The README's Python example runs as written."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs(capsys):
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    first, last = map(float, capsys.readouterr().out.split("loss")[-1].split("->"))
    assert last < 0.75 * first  # 50 steps on one fixed batch: the rule must fit it
