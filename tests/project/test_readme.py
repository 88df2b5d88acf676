"""The README's Python example runs as printed (with fewer steps)."""

import os
import re

from tests.helpers.runs import REPO

README = os.path.join(REPO, "README.md")


def test_python_example_runs():
    with open(README) as f:
        text = f.read()
    code = re.search(r"## Using metax from Python\n.*?```python\n(.*?)```", text, re.S).group(1)
    assert "range(1000)" in code
    namespace = {}
    exec(code.replace("range(1000)", "range(5)"), namespace)
    assert namespace["per_task"]["loss"].shape == (32,)
    assert int(namespace["state"].step) == 5


def test_docs_compatibility_table_is_the_generated_one():
    from metax.learner.compatibility import markdown_table

    api = os.path.join(os.path.dirname(README), "docs", "api.md")
    with open(api) as f:
        text = f.read()
    assert markdown_table() in text, "regenerate it: python -m metax.learner.compatibility"
