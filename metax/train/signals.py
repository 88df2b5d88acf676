"""Preemption and Ctrl-C in every phase of a run: the signal is noted, and the run stops at the
next safe point: in training, after saving the current step; before the first step or during
the final evaluation, at once (there is nothing new to save)."""

import signal
import threading

import jax
import orbax.checkpoint as ocp


class Stopped(Exception):  # noqa: N818 (a stop, not an error)
    """Raised at a safe point outside the training loop once a stop signal was noted."""

    def __init__(self, signal_name: str, phase: str):
        super().__init__(f"{signal_name} during {phase}")
        self.signal_name, self.phase = signal_name, phase


class StopSignals:
    """Notes SIGTERM (preemption, schedulers) and SIGINT (Ctrl-C) instead of dying, so that a
    run can stop where it is safe (`should_stop` in the training loop, `check` elsewhere). A
    second signal of the same kind is not caught: it ends the process as usual (Ctrl-C twice
    interrupts at once).

    With several processes no Python handler is installed: `jax.distributed.initialize`
    installs JAX's preemption notifier for SIGTERM, which a Python handler would replace, and
    orbax's preemption sync point (`reached_preemption`) then stops every process at the same
    step of the training loop. SIGINT keeps its default there (KeyboardInterrupt, no
    checkpoint): a Ctrl-C reaches one process only, and no public API shares it with the
    others.

    Usable once as a context manager; entering an active one again is a no-op, so the
    launcher can install it before building the run and `metax.train.train` reuse it.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, install: bool | None = None):
        """``install``: whether to install the handlers; None: when this is a single-process
        run (asks JAX, so only after `jax.distributed.initialize`; the launcher, which
        installs them first thing, knows from its flags)."""
        self.received: str | None = None
        self._install = install
        self._previous: dict = {}
        self._checks = 0
        self._depth = 0

    def __enter__(self):
        self._depth += 1
        if self._depth > 1:
            return self
        install = jax.process_count() == 1 if self._install is None else self._install
        if install and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame):
        del frame
        if self.received is not None:  # The second: do what the signal does by default.
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = {}

    def check(self, phase: str) -> None:
        """Raises `Stopped` if a stop signal arrived (a safe point outside training)."""
        if self.received is not None:
            raise Stopped(self.received, phase)

    def should_stop(self, checkpoints: ocp.CheckpointManager) -> bool:
        """Whether to save and stop now; call it once per device call, on every process.

        JAX's preemption sync point must be called with ids that grow by one (the safe id is
        the largest any process reached plus one): a call's count, not its last step, since a
        call may run several steps. Every process makes the same calls."""
        self._checks += 1
        if jax.process_count() > 1:
            if checkpoints.reached_preemption(self._checks):
                self.received = "a preemption notice (SIGTERM)"
                return True
            return False
        return self.received is not None
