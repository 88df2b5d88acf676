"""Preemption and Ctrl-C: note the signal, so the loop saves the current step and returns."""

import signal
import threading

import jax
import orbax.checkpoint as ocp


class StopSignals:
    """Notes SIGTERM (preemption, schedulers) and SIGINT (Ctrl-C) instead of dying, so the
    loop can checkpoint the current step and return.

    With several processes no Python handler is installed: `jax.distributed.initialize`
    installs JAX's preemption notifier for SIGTERM, which a Python handler would replace, and
    orbax's preemption sync point (`reached_preemption`) then stops every process at the same
    step. SIGINT keeps its default there (KeyboardInterrupt, no checkpoint): a Ctrl-C reaches
    one process only, and no public API shares it with the others.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = None
        self._previous = {}
        self._checks = 0

    def __enter__(self):
        single_process = jax.process_count() == 1
        if single_process and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame):
        del frame
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

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
