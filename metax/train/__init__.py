"""Running experiments: the training loop (`train`, the one gin root) and what a run needs
beside the functional core.

* `loop`: ``train``, the loop (checkpoints, logging, periodic evaluation, shutdown).
* `step`: the compiled meta-step (tasks drawn on device, the divergence guard), and several
  of them per device call (``make_multi_step``).
* `console`, `writers`: what a person sees on stdout; TensorBoard event files.
* `evaluation`: evaluation on held-out tasks, and of a stored run (``evaluate_run``).
* `signals`: SIGTERM / Ctrl-C handling.
* `host_memory`: handing the XLA compiler's freed heap back to the OS after compiling.
* `sharding`, `workdir`, `figures`, `configurables`: the device mesh, the run folder and its
  checkpoints, figures, gin registrations of third-party callables.

Importing it does not import TensorFlow (the metric writers load it when ``train`` runs).
"""

from metax.train.evaluation import Evaluator, evaluate_run, mean_and_ci95
from metax.train.loop import REGRESSION_FIGURE, train
from metax.train.step import fetch, guard_nonfinite, make_multi_step, make_train_step

__all__ = [
    "REGRESSION_FIGURE",
    "Evaluator",
    "evaluate_run",
    "fetch",
    "guard_nonfinite",
    "make_multi_step",
    "make_train_step",
    "mean_and_ci95",
    "train",
]
