"""The README's Python example runs as printed (with fewer steps)."""

import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_python_example_runs():
    with open(README) as f:
        text = f.read()
    code = re.search(r"## Using metax from Python\n.*?```python\n(.*?)```", text, re.S).group(1)
    assert "range(1000)" in code
    namespace = {}
    exec(code.replace("range(1000)", "range(5)"), namespace)
    assert namespace["per_task"]["loss"].shape == (32,)
    assert int(namespace["state"].step) == 5
