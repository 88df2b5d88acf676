"""What a person watching a run sees on stdout (process 0 only): the compile time, a live
progress bar on a terminal or plain periodic lines otherwise, announcements of the slow
phases, and a short summary at the end. Logs and TensorBoard are written elsewhere; this is
only for the eye."""

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from tqdm import tqdm

PREFIX = "metax: "


def loss_name(metrics: dict[str, float]) -> str | None:
    """The training metric a person follows: the outer loss when the learner reports one."""
    for preferred in ("train/outer/loss", "train/loss"):
        if preferred in metrics:
            return preferred
    losses = sorted(k for k in metrics if k.endswith("loss"))
    return losses[0] if losses else None


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _number(value: float) -> str:
    return f"{value:.4g}"


def evaluation_table(metrics: dict[str, float], split: str) -> list[str]:
    """Rows ``<setting>  <metric> mean +- ci95 ...`` for the ``<split>/<setting>/<metric>``
    entries of ``metrics`` (e.g. ``eval/steps_5/loss`` and ``eval/steps_5/loss_ci95``)."""
    rows: dict[str, list[str]] = {}
    for key in sorted(metrics):
        parts = key.split("/")
        if len(parts) != 3 or parts[0] != split or parts[2].endswith("_ci95"):
            continue
        ci = metrics.get(f"{key}_ci95")
        shown = _number(metrics[key]) + (f" +- {_number(ci)}" if ci is not None else "")
        rows.setdefault(parts[1], []).append(f"{parts[2]} {shown}")

    def order(setting: str):
        # "steps_10" after "steps_5": by the number of inner steps where there is one.
        tail = setting.rsplit("_", 1)[-1]
        return (setting.rsplit("_", 1)[0], int(tail) if tail.isdigit() else math.inf, setting)

    width = max((len(s) for s in rows), default=0)
    return [f"{s:<{width}}  {'   '.join(rows[s])}" for s in sorted(rows, key=order)]


class Console:
    """Prints a run's progress. ``enabled=False`` (processes other than 0) prints nothing.

    On a terminal (``stream.isatty()``) a tqdm bar shows steps, steps/s, ETA, tasks/s and
    the latest training loss; elsewhere (a log file, a cluster's stdout) one line every
    ``log_every`` steps says the same. Speeds exclude the first meta-step of a process (it
    compiles)."""

    def __init__(
        self,
        *,
        enabled: bool,
        num_steps: int,
        meta_batch_size: int,
        stream: TextIO | None = None,
    ):
        self.enabled = enabled
        self.num_steps = num_steps
        self.meta_batch_size = meta_batch_size
        self.stream = stream or sys.stdout
        self.interactive = enabled and self.stream.isatty()
        self.bar: tqdm | None = None
        self.compile_seconds: float | None = None
        self._interval_start: tuple[int, float] | None = None  # (step, time) after compiling
        self._run_start: tuple[int, float] | None = None
        self._loop_end: float | None = None

    def say(self, text: str) -> None:
        """One line, above the progress bar if there is one."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(PREFIX + text, file=self.stream)
        else:
            print(PREFIX + text, file=self.stream, flush=True)

    def start(self, step: int) -> None:
        """Called before the first meta-step of this process, at ``step``."""
        self.say("compiling the meta-step ...")
        self._compile_start = time.perf_counter()
        if self.interactive:
            self.bar = tqdm(
                total=self.num_steps,
                initial=step,
                unit="step",
                file=self.stream,
                dynamic_ncols=True,
                smoothing=0.1,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                "{rate_fmt}{postfix}]",
            )

    def compiled(self, step: int) -> None:
        """Called once the first meta-step (at ``step``, after it) has finished."""
        now = time.perf_counter()
        self.compile_seconds = now - self._compile_start
        self._interval_start = self._run_start = (step, now)
        self.say(f"compiled and ran the first meta-step in {self.compile_seconds:.1f} s.")
        if self.bar is not None:
            # The bar's rate and ETA should not count the compilation.
            self.bar.reset(total=self.num_steps)
            self.bar.update(step)

    def advance(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def interval_speed(self, step: int) -> float | None:
        """Meta-steps per second since the last call (None before any step has compiled)."""
        if self._interval_start is None or step <= self._interval_start[0]:
            return None
        now = time.perf_counter()
        first, then = self._interval_start
        self._interval_start = (step, now)
        return (step - first) / max(now - then, 1e-9)

    def logged(self, step: int, metrics: dict[str, float], steps_per_sec: float | None) -> None:
        """Called every ``log_every`` steps with the interval's mean training metrics."""
        if not self.enabled:
            return
        name = loss_name(metrics)
        loss = f"{name.removeprefix('train/')} {_number(metrics[name])}" if name else ""
        if self.bar is not None:
            postfix = {"loss": _number(metrics[name])} if name else {}
            if steps_per_sec is not None:
                postfix["tasks/s"] = f"{steps_per_sec * self.meta_batch_size:,.0f}"
            self.bar.set_postfix(postfix, refresh=True)
            return
        parts = [f"step {step:,}/{self.num_steps:,} ({100 * step / self.num_steps:.0f}%)"]
        if loss:
            parts.append(loss)
        if steps_per_sec is not None:
            eta = (self.num_steps - step) / steps_per_sec
            parts += [
                f"{steps_per_sec:,.1f} steps/s",
                f"{steps_per_sec * self.meta_batch_size:,.0f} tasks/s",
                f"ETA {_duration(eta)}",
            ]
        self.say("   ".join(parts))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside (periodic evaluation) does not count in the speeds."""
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            if self.bar is not None:
                self.bar.unpause()
            if self._interval_start is not None and self._run_start is not None:
                self._interval_start = (self._interval_start[0], self._interval_start[1] + spent)
                self._run_start = (self._run_start[0], self._run_start[1] + spent)

    def evaluated(self, step: int, metrics: dict[str, float], split: str) -> None:
        rows = evaluation_table(metrics, split)
        if rows:
            tasks = int(metrics.get(f"{split}/num_tasks", 0))
            compact = ";  ".join(" ".join(row.split()) for row in rows)
            self.say(f"step {step:,}, {split} on {tasks} held-out tasks: {compact}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def training_done(self) -> None:
        """Called when the last meta-step has finished, before the final evaluation."""
        self._loop_end = time.perf_counter()
        self.close()

    def summary(self, final: dict[str, float], workdir, outputs: list[str]) -> None:
        """The end of a run: steps, times, the held-out metrics, where the outputs are."""
        self.close()
        if not self.enabled:
            return
        step = int(final["step"])
        timing = ""
        if self.compile_seconds is not None and self._run_start is not None:
            timing = f" (compiling {self.compile_seconds:.1f} s"
            first, then = self._run_start
            if step > first and self._loop_end is not None:
                timing += f", then {(step - first) / max(self._loop_end - then, 1e-9):,.1f} steps/s"
            timing += ")"
        lines = [f"done: {step:,} meta-steps in {_duration(final['wall_time_s'])}{timing}."]
        if "best/step" in final:
            lines.append(f"best checkpoint by validation: step {int(final['best/step']):,}.")
        for split, what in (("val", "meta-validation"), ("eval", "meta-test")):
            rows = evaluation_table(final, split)
            if rows:
                tasks = int(final.get(f"{split}/num_tasks", 0))
                lines.append(f"{what} on {tasks} held-out tasks (mean +- 95% CI):")
                lines += [f"  {row}" for row in rows]
        lines.append(f"outputs in {workdir}: {', '.join(outputs)}")
        lines.append(f"  view them with: tensorboard --logdir {workdir}")
        for line in lines:
            self.say(line)
