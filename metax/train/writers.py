"""The run's metric writer: TensorBoard event files on process 0, the log on every process.

Summaries are written as clu's TensorBoard writer writes them (images, texts and hparams in
the TensorBoard plugins' formats), except scalars, which are classic scalar events
(``simple_value``) that every TensorBoard reader understands: the UI,
``EventAccumulator.Scalars``, tbparse and experiment trackers' importers.

TensorBoard's own protos and record writer do the writing, without TensorFlow: clu's
``metric_writers`` import TensorFlow when imported, which would cost every training process
its memory and start-up time (benchmarks/memory_stages.py). Writes run on one background thread
(clu's ``asynclib``, as clu's ``AsyncWriter``), in order; an error in one is raised at the
next write, ``flush`` or ``close``.
"""

import io
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging
from clu import asynclib
from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

# How often buffered events reach the file at the latest (TensorFlow's writer: 120 s).
FLUSH_EVERY_S = 30.0


class EventFile:
    """One TensorBoard event file in ``logdir`` (local or an epath such as gs://...)."""

    def __init__(self, logdir: str | os.PathLike):
        folder = epath.Path(logdir)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}"
        self.path = folder / name
        self._file = self.path.open("wb")
        self._records = RecordWriter(self._file)
        self._last_flush = time.monotonic()
        self.write(event_pb2.Event(file_version="brain.Event:2"))

    def write(self, event: event_pb2.Event) -> None:
        if not event.wall_time:
            event.wall_time = time.time()
        self._records.write(event.SerializeToString())
        if time.monotonic() - self._last_flush > FLUSH_EVERY_S:
            self.flush()

    def write_summary(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
        self.write(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=values)))

    def flush(self) -> None:
        self._records.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self._records.close()


class MetricWriter:
    """Scalars to the log (absl INFO, as clu's ``LoggingWriter``) and, with an event file,
    every summary to it. The methods and their arguments are clu's ``MetricWriter``'s."""

    def __init__(self, events: EventFile | None):
        self._events = events
        self._pool = asynclib.Pool(thread_name_prefix="metax_writer", max_workers=1)

    def _submit(self, step: int, make_values, *args) -> None:
        if self._events is not None:
            self._pool(lambda: self._events.write_summary(step, make_values(*args)))()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """``scalars``: name -> a number (a Python, NumPy or 0-d JAX value)."""
        scalars = {name: float(value) for name, value in scalars.items()}
        text = ", ".join(f"{name}={value:.6g}" for name, value in sorted(scalars.items()))
        logging.info("[%d] %s", step, text)
        self._submit(step, _scalar_values, scalars)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """``images``: name -> ``(N, H, W, C)`` (or ``(H, W, C)``), C in {1, 3, 4}, uint8 or
        floats in [0, 1]."""
        images = {name: np.asarray(batch) for name, batch in images.items()}
        for name, batch in images.items():
            if batch.ndim not in (3, 4) or batch.shape[-1] not in (1, 3, 4):
                raise ValueError(
                    f"Image {name!r} has shape {batch.shape}; write (N, H, W, C) or (H, W, C) "
                    "with C = 1 (grey), 3 (RGB) or 4 (RGBA)."
                )
        self._submit(step, _image_values, images)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        """``texts``: name -> Markdown."""
        self._submit(step, _text_values, dict(texts))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """``hparams``: name -> a bool, number or string (TensorBoard's HParams dashboard)."""
        pb = hparams_summary.hparams_pb(dict(hparams))
        self._submit(0, lambda: list(pb.value))

    def flush(self) -> None:
        """Waits for every write and brings the event file up to date."""
        if self._events is not None:
            self._pool(self._events.flush)()
        self._pool.join()

    def close(self) -> None:
        self.flush()
        if self._events is not None:
            self._events.close()
        self._pool.close()


def _scalar_values(scalars: dict[str, float]) -> list[summary_pb2.Summary.Value]:
    return [summary_pb2.Summary.Value(tag=name, simple_value=v) for name, v in scalars.items()]


def _image_values(images: dict[str, np.ndarray]) -> list[summary_pb2.Summary.Value]:
    """Each as tf.summary.image writes it: a string tensor [width, height, PNG, PNG, ...]."""
    from PIL import Image

    values = []
    for name, batch in images.items():
        batch = batch[None] if batch.ndim == 3 else batch
        if batch.dtype != np.uint8:
            batch = np.round(np.clip(batch, 0.0, 1.0) * 255).astype(np.uint8)
        pngs = []
        for image in batch:
            buffer = io.BytesIO()
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                buffer, format="PNG"
            )
            pngs.append(buffer.getvalue())
        height, width = batch.shape[1:3]
        tensor = np.array([str(width).encode(), str(height).encode(), *pngs], dtype=object)
        values.append(
            summary_pb2.Summary.Value(
                tag=name,
                metadata=image_metadata.create_summary_metadata(
                    display_name=None, description=None
                ),
                tensor=tensor_util.make_tensor_proto(tensor),
            )
        )
    return values


def _text_values(texts: dict[str, str]) -> list[summary_pb2.Summary.Value]:
    metadata = text_metadata.create_summary_metadata(display_name=None, description=None)
    return [
        summary_pb2.Summary.Value(
            tag=name, metadata=metadata, tensor=tensor_util.make_tensor_proto(text)
        )
        for name, text in texts.items()
    ]


def create_writer(workdir: str | os.PathLike, is_chief: bool) -> MetricWriter:
    """The run's writer: an event file in ``workdir`` and the log on process 0 (its
    ``is_chief``), the log only elsewhere (as `clu.metric_writers.create_default_writer`)."""
    return MetricWriter(EventFile(workdir) if is_chief else None)
