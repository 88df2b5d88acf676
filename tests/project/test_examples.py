"""Every script in examples/ runs in short mode and lowers its post-adaptation query loss."""

import os
import re
import runpy
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers.runs import REPO

EXAMPLES = os.path.join(REPO, "examples")
# Meta-steps in short mode: enough for each to improve on its initialization.
SHORT_STEPS = {
    "maml_sinusoid": 300,
    "gainmod_reptile": 300,
    "anil_evolution": 300,
    "cavia_conjugate_gradient": 100,
    "compsyn_eqprop": 100,
    "custom_model": 300,
}


def test_every_example_is_tested():
    scripts = {name[:-3] for name in os.listdir(EXAMPLES) if name.endswith(".py")}
    assert scripts == set(SHORT_STEPS)


# The figure code is shared by all examples: drawing it in two keeps the suite short.
DRAWN = ("maml_sinusoid", "compsyn_eqprop")


@pytest.mark.parametrize("name", sorted(SHORT_STEPS))
def test_example_lowers_its_post_adaptation_loss(name, monkeypatch, capsys, tmp_path):
    figure = tmp_path / f"{name}.png"
    monkeypatch.setenv("METAX_EXAMPLE_STEPS", str(SHORT_STEPS[name]))
    monkeypatch.setattr(sys, "argv", [name] + (["--figure", str(figure)] if name in DRAWN else []))
    runpy.run_path(os.path.join(EXAMPLES, f"{name}.py"), run_name="__main__")
    output = capsys.readouterr().out
    match = re.search(r"post-adaptation query loss: ([\d.]+) -> ([\d.]+)", output)
    assert match, output
    initial, final = map(float, match.groups())
    assert final < initial, output
    if name not in DRAWN:
        return
    # The figure of 4 held-out tasks: a PNG of 4 panels of 300 x 240 pixels.
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.size == (960, 300)
        assert np.asarray(image.convert("L")).std() > 0  # Not blank.
