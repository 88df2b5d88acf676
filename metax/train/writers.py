"""The run's metric writer: clu's (TensorBoard event files on process 0, the log everywhere),
with scalars written as classic scalar events (``simple_value``), which every TensorBoard
reader understands: the UI, ``EventAccumulator.Scalars``, tbparse and experiment trackers'
importers. (clu writes scalars as tensor summaries, which only TensorBoard's UI and its
plugin-aware loaders show as scalars.)"""

from clu import metric_writers


class SummaryWriter(metric_writers.SummaryWriter):
    """clu's `SummaryWriter` (images, texts, hparams, ...) with classic scalar events."""

    def write_scalars(self, step: int, scalars) -> None:
        import tensorflow as tf
        from tensorboard.compat.proto import summary_pb2

        values = [
            summary_pb2.Summary.Value(tag=name, simple_value=float(value))
            for name, value in scalars.items()
        ]
        summary = summary_pb2.Summary(value=values).SerializeToString()
        # clu keeps its tf.summary file writer here; one event file for everything.
        with self._summary_writer.as_default():
            tf.summary.experimental.write_raw_pb(summary, step=step)


def create_writer(workdir: str, is_chief: bool) -> metric_writers.MetricWriter:
    """An asynchronous writer: event files in ``workdir`` and the log on process 0 (its
    ``is_chief``), the log only elsewhere (as `clu.metric_writers.create_default_writer`)."""
    writers = [metric_writers.LoggingWriter()]
    if is_chief:
        writers.append(SummaryWriter(str(workdir)))
    return metric_writers.AsyncMultiWriter(writers)
