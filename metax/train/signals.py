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

    def should_stop(self, checkpoints: ocp.CheckpointManager, step: int) -> bool:
        if jax.process_count() > 1:
            if checkpoints.reached_preemption(step):
                self.received = "a preemption notice (SIGTERM)"
                return True
            return False
        return self.received is not None
