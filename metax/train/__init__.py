"""Running experiments: the training loop and what a run needs beside the functional core.

* `config`: ``TrainConfig``, a run's settings as one validated value (gin's ``train``), with
  `Evaluation`, `Validation` (in `evaluation`) and `Checkpoints` (in `checkpoints`).
* `loop`: ``train(config, workdir)``, the loop in four phases (start-up, training, final
  evaluation, finished).
* `restore`: a trained run back from its workdir (``restore_run``) and its evaluation
  (``evaluate_run``).
* `step`: the compiled meta-step (tasks drawn on device, the divergence guard), and several
  of them per device call (``make_multi_step``).
* `evaluation`: evaluation on held-out tasks, means and 95% confidence intervals.
* `console`, `writers`: what a person sees on stdout; TensorBoard event files.
* `checkpoints`, `workdir`: the run's checkpoints; its folder and stored config.
* `signals`: SIGTERM / Ctrl-C handling. `host_memory`: handing the XLA compiler's freed heap
  back to the OS after compiling. `sharding`, `figures`, `configurables`: the device mesh,
  figures, gin registrations of third-party callables.

Importing it does not import TensorFlow.
"""

import metax.train.configurables  # noqa: F401  (gin names of optax and jax.nn, for configs)
from metax.train.checkpoints import Checkpoints
from metax.train.config import TrainConfig
from metax.train.evaluation import Evaluation, Evaluator, Validation, mean_and_ci95
from metax.train.loop import REGRESSION_FIGURE, train
from metax.train.restore import RestoredRun, evaluate_run, load_config, restore_run
from metax.train.step import fetch, guard_nonfinite, make_multi_step, make_train_step

__all__ = [
    "REGRESSION_FIGURE",
    "Checkpoints",
    "Evaluation",
    "Evaluator",
    "RestoredRun",
    "TrainConfig",
    "Validation",
    "evaluate_run",
    "fetch",
    "guard_nonfinite",
    "load_config",
    "make_multi_step",
    "make_train_step",
    "mean_and_ci95",
    "restore_run",
    "train",
]
