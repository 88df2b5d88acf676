"""`import metax` stays light: the functional core never imports TensorFlow."""

import subprocess
import sys


def test_import_metax_does_not_import_tensorflow():
    code = (
        "import sys, metax, metax.train, metax.train.configurables\n"
        "heavy = [m for m in ('tensorflow', 'clu.metric_writers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
