"""The training loop's metric writer: what TensorBoard readers find in its event file."""

import glob
import io

import numpy as np
import pytest
from clu import asynclib
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metax.train import writers


def read_events(logdir) -> EventAccumulator:
    events = EventAccumulator(str(logdir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    return events


def test_every_summary_reads_back_as_tensorboard_shows_it(tmp_path):
    writer = writers.create_writer(tmp_path, is_chief=True)
    writer.write_scalars(3, {"loss": np.float32(0.25), "count": 2})
    writer.write_scalars(5, {"loss": 0.125, "count": 4})
    rgb = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    grey = np.linspace(0.0, 1.0, 12).reshape(3, 4, 1)
    writer.write_images(0, {"rgb": rgb, "grey": grey})
    writer.write_texts(0, {"config": "train.num_steps = 20 (ü)"})
    writer.write_hparams({"train.seed": 3, "name": "x", "flag": True})
    writer.close()

    events = read_events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(3, 0.25), (5, 0.125)]
    assert [(e.step, e.value) for e in events.Scalars("count")] == [(3, 2.0), (5, 4.0)]
    # tf.summary.image's layout: [width, height, PNG per image].
    width, height, *pngs = events.Tensors("rgb")[0].tensor_proto.string_val
    assert (int(width), int(height)) == (4, 3) and len(pngs) == 2
    for png, image in zip(pngs, rgb, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), image)
    (_, _, png) = events.Tensors("grey")[0].tensor_proto.string_val
    decoded = np.asarray(Image.open(io.BytesIO(png)))
    np.testing.assert_array_equal(decoded, np.round(grey[..., 0] * 255).astype(np.uint8))
    (text,) = events.Tensors("config")
    assert text.tensor_proto.string_val[0].decode() == "train.num_steps = 20 (ü)"
    plugins = {
        tag: events.SummaryMetadata(tag).plugin_data.plugin_name
        for tag in ("rgb", "config", "_hparams_/session_start_info")
    }
    assert plugins == {"rgb": "images", "config": "text", "_hparams_/session_start_info": "hparams"}


def test_other_processes_log_and_write_no_file(tmp_path, caplog):
    from absl import logging

    logging.set_verbosity(logging.INFO)
    writer = writers.create_writer(tmp_path, is_chief=False)
    writer.write_scalars(7, {"loss": 0.5})
    writer.write_images(7, {"episode": np.zeros((2, 2, 3), np.uint8)})
    writer.close()
    assert not list(tmp_path.iterdir())
    assert "[7] loss=0.5" in caplog.text


def test_events_reach_the_file_without_a_flush_once_the_flush_period_passed(tmp_path, monkeypatch):
    monkeypatch.setattr(writers, "FLUSH_EVERY_S", 0.0)
    writer = writers.create_writer(tmp_path, is_chief=True)
    writer.write_scalars(1, {"loss": 1.0})
    writer._pool.join()  # The write itself ran; nothing asked for a flush.
    assert [e.step for e in read_events(tmp_path).Scalars("loss")] == [1]
    writer.close()


def test_a_bad_image_is_refused_at_the_call_and_a_failed_write_is_raised_at_flush(
    tmp_path, monkeypatch
):
    writer = writers.create_writer(tmp_path, is_chief=True)
    with pytest.raises(ValueError, match=r"has shape \(4, 4\); write \(N, H, W, C\)"):
        writer.write_images(0, {"episode": np.zeros((4, 4))})

    def broken(texts):
        raise OSError("disk full")

    monkeypatch.setattr(writers, "_text_values", broken)
    writer.write_texts(0, {"config": "x"})
    with pytest.raises(asynclib.AsyncError, match="disk full"):
        writer.flush()
    assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 1
