"""The documents agree with the code: the generated key reference, README's links and size."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_configuration_reference_matches_configs_base():
    proc = subprocess.run([sys.executable, "-m", "experiments.config_doc", "--check"], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_readme_is_short_links_resolve_and_the_example_comes_early():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    lines = text.splitlines()
    assert len(lines) <= 200
    assert next(i for i, line in enumerate(lines) if line.startswith("```python")) < 100
    docs = [os.path.relpath(os.path.join(d, f), REPO)
            for d, _, files in os.walk(os.path.join(REPO, "docs")) for f in files
            if f.endswith(".md")]
    assert "docs/experiments/history.md" in docs
    for doc in ("README.md", "BENCHMARKS.md", *docs):
        with open(os.path.join(REPO, doc)) as f:
            body = f.read()
        for target in re.findall(r"\]\(([^)#]+\.(?:md|png))\)", body):
            path = os.path.normpath(os.path.join(REPO, os.path.dirname(doc), target))
            assert os.path.exists(path), f"{doc} links to missing {target}"
