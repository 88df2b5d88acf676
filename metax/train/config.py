"""A run's settings as one validated value: `TrainConfig`, gin's ``train``.

In gin, ``train.<field>`` binds a field (``train.num_steps = 5000``); the values it holds bind
their own fields by class name (``Evaluation.every = 500``, ``Checkpoints.every = 1000``,
``train.validation = @metax.train.Validation()`` with ``Validation.sampler = ...``). Every
field is checked when the value is built, with one line naming the binding.
"""

import dataclasses

import gin

from metax.data.base import TaskSampler
from metax.data.host import HostTaskSampler
from metax.learner.base import Learner
from metax.train.checkpoints import Checkpoints
from metax.train.evaluation import SAMPLER_KINDS, SAMPLERS, Evaluation, Validation
from metax.validate import check_bool, check_instance, check_int

# Bindings of metax 0.2 and the settings that replaced them (0.3): named in the error a stored
# or hand-written config with an old binding gets.
RENAMED_BINDINGS = {
    "train.eval_sampler": "Evaluation.sampler",
    "train.eval_every": "Evaluation.every",
    "train.eval_inner_steps": "Evaluation.inner_steps",
    "train.eval_num_tasks": "Evaluation.num_tasks",
    "train.eval_batch_size": "Evaluation.batch_size",
    "train.val_sampler": "Validation.sampler (with train.validation = @metax.train.Validation())",
    "train.select_metric": "Validation.metric",
    "train.checkpoint_every": "Checkpoints.every",
    "train.max_checkpoints_to_keep": "Checkpoints.max_to_keep",
    "train.verbose": "the launcher's --noprogress flag (train(..., verbose=False) in Python)",
}


@gin.configurable("train", module="metax.train")
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run computes and when it reports, evaluates and saves; with the seed, a
    run is reproducible from it. gin's ``train`` (see the module docstring).

    Attributes:
      learner: e.g. ``metax.learner.maml(...)``.
      train_sampler: draws the meta-training tasks, on device (`metax.data.TaskSampler`,
        inside the compiled step) or on the host (`metax.data.host.HostTaskSampler`, each
        process its share, built ahead).
      meta_batch_size: tasks per meta-step; must divide over all devices.
      num_steps: meta-steps of the run (a resumed run stops at the same step).
      seed: the only source of randomness of the run.
      log_every: training metrics (averaged over the interval) every this many steps.
      evaluation: held-out evaluation (`Evaluation`).
      validation: model selection on meta-validation tasks (`Validation`); None: none.
      checkpoints: when the state is saved (`Checkpoints`).
      steps_per_call: meta-steps per device call for on-device samplers (above 1, a
        ``lax.fori_loop`` over the same step: one host visit per call, for accelerators
        whose dispatch latency is not hidden). Calls end at every log, evaluation and
        checkpoint step, so results are bitwise those of one step per call. Host-fed
        samplers take one step per call.
      skip_nonfinite: a step with a non-finite metric or meta-parameter is never applied; by
        default the run stops with a FloatingPointError naming the step; with True it goes
        on, counting skipped steps (``train/skipped_steps``).
    """

    learner: Learner
    train_sampler: TaskSampler | HostTaskSampler
    meta_batch_size: int = 25
    num_steps: int = 1000
    seed: int = 0
    log_every: int = 100
    evaluation: Evaluation = dataclasses.field(default_factory=Evaluation)
    validation: Validation | None = None
    checkpoints: Checkpoints = dataclasses.field(default_factory=Checkpoints)
    steps_per_call: int = 1
    skip_nonfinite: bool = False

    def __post_init__(self):
        check_instance(
            "train.learner",
            self.learner,
            (Learner,),
            "a metax Learner (e.g. metax.learner.maml(...); in gin @metax.learner.maml())",
        )
        check_instance("train.train_sampler", self.train_sampler, SAMPLERS, SAMPLER_KINDS)
        check_int("train.meta_batch_size", self.meta_batch_size)
        check_int("train.num_steps", self.num_steps)
        check_int("train.seed", self.seed, minimum=0)
        check_int("train.log_every", self.log_every)
        check_instance(
            "train.evaluation", self.evaluation, (Evaluation,), "a metax.train.Evaluation"
        )
        if self.validation is not None:
            check_instance(
                "train.validation", self.validation, (Validation,), "a metax.train.Validation"
            )
            self.validation.selection(self.learner, self.evaluation.inner_steps)
        check_instance(
            "train.checkpoints", self.checkpoints, (Checkpoints,), "a metax.train.Checkpoints"
        )
        check_int("train.steps_per_call", self.steps_per_call)
        check_bool("train.skip_nonfinite", self.skip_nonfinite)

    @property
    def eval_sampler(self):
        """The sampler of the held-out tasks: ``evaluation.sampler``, else the training one."""
        return self.evaluation.sampler or self.train_sampler

    @property
    def eval_batch_size(self) -> int:
        """Tasks per evaluation call: ``evaluation.batch_size``, else the meta-batch size."""
        return self.evaluation.batch_size or self.meta_batch_size
