"""Omniglot prepared offline from the minimal zips in ../shared/data/omniglot, read back."""

import os
import sys

import jax
import numpy as np
import pytest

from metax.data import Episodes, fewshot, omniglot_builder, omniglot_splits, preprocess
from metax.data import omniglot as omniglot_episodes
from tests.helpers.runs import REPO
from tests.helpers.xla_flags import with_device_count

ZIPS = os.environ.get(
    omniglot_splits.DATA_DIR_ENV, os.path.join(os.path.dirname(REPO), "shared", "data", "omniglot")
)
HAVE_ZIPS = os.path.exists(os.path.join(ZIPS, "images_background_small1.zip"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not HAVE_ZIPS:
        pytest.skip(f"Omniglot zips not found in {ZIPS} (set {omniglot_splits.DATA_DIR_ENV}).")
    return omniglot_builder.prepare(ZIPS, str(tmp_path_factory.mktemp("tfds")))


def test_minimal_splits_are_prepared_and_read_back(prepared):
    assert {s: prepared.info.splits[s].num_examples for s in ("small1", "small2")} == {
        "small1": 2720,
        "small2": 3120,
    }
    small1, alphabets1 = omniglot_builder.load_classes(prepared, "small1")
    small2, alphabets2 = omniglot_builder.load_classes(prepared, "small2")
    assert small1.shape == (136, 20, 28, 28, 1) and small2.shape == (156, 20, 28, 28, 1)
    assert small1.dtype == np.uint8 and small1.max() == 255
    assert 0.02 < small1.mean() / 255 < 0.3  # Ink on empty background, not inverted.
    assert len(set(alphabets1)) == 5 and len(set(alphabets2)) == 5
    # Greek and Latin are in both zips: the minimal meta-test set is small2's other alphabets.
    test_classes = small2[~np.isin(alphabets2, alphabets1)]
    assert len(set(alphabets2) - set(alphabets1)) == 3 and len(test_classes) > 0
    episode = fewshot(test_classes, Episodes(ways=5, shots=1, queries=5)).sample_task(
        jax.random.key(0)
    )
    assert episode.support.x.shape == (5, 28, 28, 1) and episode.query.x.shape == (25, 28, 28, 1)


def test_preparing_and_reading_omniglot_imports_no_tensorflow(prepared, tmp_path):
    """In a fresh process: the test process may have imported TensorFlow for another test (the
    TensorBoard readers), which would make an in-process check depend on test order."""
    import subprocess

    code = (
        "import sys; from metax.data import omniglot_builder; "
        f"builder = omniglot_builder.prepare({ZIPS!r}, {str(tmp_path)!r}); "
        "omniglot_builder.load_classes(builder, 'small2'); "
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_missing_data_fails_at_once_with_instructions(tmp_path):
    os.makedirs(tmp_path / "empty")
    for folder in ("nowhere", "empty"):
        with pytest.raises(FileNotFoundError, match="No Omniglot zip in.*images_background_small1"):
            omniglot_builder.prepare(str(tmp_path / folder), str(tmp_path / "tfds"))


def test_maml_learns_5_way_1_shot_on_the_minimal_splits(tmp_path, monkeypatch):
    """100 meta-steps of 4 episodes (conv4, 16 channels, strided, 1 inner step of 0.4): the
    meta-test accuracy after one step, over 100 episodes of small2's unseen alphabets, rises
    well above chance (20%). Measured: 0.275 at initialization -> 0.402."""
    if not HAVE_ZIPS:
        pytest.skip(f"Omniglot zips not found in {ZIPS} (set {omniglot_splits.DATA_DIR_ENV}).")
    import jax.numpy as jnp
    import optax

    from metax import data, energy, learner, meta_models, nn

    # Prepared where TFDS users expect it: $TFDS_DATA_DIR (no data_dir, no $METAX_TFDS_DIR).
    monkeypatch.delenv("METAX_TFDS_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    kwargs = dict(splits="minimal", episodes=Episodes(ways=5, shots=1, queries=5), manual_dir=ZIPS)
    train_sampler = omniglot_episodes("train", **kwargs)
    assert any(name.startswith("omniglot") for name in os.listdir(tmp_path)), os.listdir(tmp_path)
    test_sampler = omniglot_episodes("test", **kwargs)
    model = nn.sequential(body=nn.conv4(num_channels=16, pooling="strided"), head=nn.linear(5))
    maml = learner.maml(
        meta_models.learned_init(model, loss_fn=energy.cross_entropy),
        optax.sgd(0.4),
        optax.adam(1e-3),
        num_inner_steps=1,
    )
    eval_batch = data.sample_meta_batch(test_sampler, jax.random.key(100), 100)
    state = maml.init(jax.random.key(0), eval_batch)
    evaluate = jax.jit(maml.evaluate, static_argnums=3)

    def accuracy(state):
        return float(jnp.mean(evaluate(state, eval_batch, jax.random.key(1), 1)["accuracy"]))

    @jax.jit
    def train(state):
        def body(state, _):
            key = jax.random.fold_in(jax.random.key(2), state.step)
            batch = data.sample_meta_batch(train_sampler, key, 4)
            return maml.meta_step(state, batch, jax.random.fold_in(key, 1))

        return jax.lax.scan(body, state, length=100)[0]

    before = accuracy(state)
    after = accuracy(train(state))
    assert after > 0.35 and after > before + 0.08, (before, after)


def _fake_drawing(label: int, drawing: int) -> np.ndarray:
    image = np.full((105, 105, 3), 255, np.uint8)  # Black ink on white, as TFDS stores it.
    image[10 * label : 10 * label + 30, 2 * drawing : 2 * drawing + 30] = 0
    return image


def _fake_standard_split(self, split, **unused_kwargs):
    """What TFDS's ``omniglot`` builder yields (105x105x3, global labels), not in label order:
    small1 has alphabets 0, 1; small2 has alphabets 1, 2; two characters per alphabet."""
    alphabets = {"small1": (0, 1), "small2": (1, 2)}[split]
    return [
        {"image": _fake_drawing(label, d), "label": label, "alphabet": alphabet}
        for alphabet in alphabets[::-1]
        for label in (2 * alphabet + 1, 2 * alphabet)
        for d in range(omniglot_builder.DRAWINGS_PER_CHARACTER)
    ]


def test_the_standard_tfds_builder_is_read_the_same_way(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(as_data_source_fn=_fake_standard_split):
        train, _ = omniglot_splits.omniglot_classes_and_alphabets(
            "train", "minimal", "tfds", data_dir=str(tmp_path)
        )
        test, _ = omniglot_splits.omniglot_classes_and_alphabets(
            "test", "minimal", "tfds", data_dir=str(tmp_path)
        )
    assert train.shape == (4, 20, 28, 28, 1) and test.shape == (2, 20, 28, 28, 1)
    assert train.dtype == np.uint8 and train.max() == 255 and train[0, 0, -1, -1, 0] == 0
    # Classes in label order, drawings in order; meta-test = small2's alphabet 2 (labels 4, 5),
    # as alphabet 1 is also in small1.
    for images, labels in ((train, (0, 1, 2, 3)), (test, (4, 5))):
        for i, label in enumerate(labels):
            for d in (0, 7):
                expected = preprocess.omniglot_image(_fake_drawing(label, d))
                np.testing.assert_array_equal(images[i, d], expected)


def test_launcher_runs_omniglot_and_shows_the_first_episode_in_tensorboard(tmp_path):
    """The minimal-splits config through the launcher, shrunk to 2 meta-steps: the event file
    holds a PNG grid of the first training episode (5 rows of 1 support + 15 query images)."""
    if not HAVE_ZIPS:
        pytest.skip(f"Omniglot zips not found in {ZIPS} (set {omniglot_splits.DATA_DIR_ENV}).")
    import glob
    import io
    import json
    import subprocess

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = dict(
        os.environ,
        XLA_FLAGS=with_device_count(2),
        METAX_OMNIGLOT_DIR=ZIPS,
        METAX_TFDS_DIR=str(tmp_path / "tfds"),
    )
    bindings = [
        "metax.nn.conv4.num_channels = 4",
        "train.num_steps = 2",
        "train.meta_batch_size = 2",
        "train.log_every = 1",
        "Checkpoints.every = 2",
        "Evaluation.num_tasks = 4",
        "Evaluation.inner_steps = (1,)",
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.train",
            "--gin_file=configs/maml_omniglot_minimal.gin",
            f"--workdir={tmp_path / 'run'}",
            *[f"--gin_bindings={b}" for b in bindings],
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert 0 <= metrics["eval/steps_1/accuracy"] <= 1 and metrics["eval/num_tasks"] == 4
    events = EventAccumulator(glob.glob(str(tmp_path / "run" / "events.out.tfevents.*"))[0])
    events.Reload()
    (summary,) = events.Tensors("episode")
    assert summary.step == 0
    width, height, png = summary.tensor_proto.string_val
    grid = np.asarray(Image.open(io.BytesIO(png)))
    assert grid.shape == (int(height), int(width), 3)
    assert grid.shape[0] > 5 * 2 * 28 and grid.shape[1] > 16 * 2 * 28  # 5 rows, 16 columns.


def test_within_alphabet_episodes_use_one_alphabet(prepared):
    images, alphabets = omniglot_builder.load_classes(prepared, "small1")
    sampler = fewshot(
        images, Episodes(ways=5, shots=1, queries=1), rotations=True, groups=alphabets
    )
    for seed in range(10):
        classes = np.asarray(sampler.sample_task(jax.random.key(seed)).support.info["classes"])
        assert len(set(alphabets[classes % len(images)].tolist())) == 1


def test_validation_splits_hold_out_classes_from_training_only(tmp_path):
    import tensorflow_datasets as tfds

    def classes(mode, splits):
        return omniglot_splits.omniglot_classes_and_alphabets(
            mode, splits, "tfds", data_dir=str(tmp_path)
        )

    with tfds.testing.mock_data(as_data_source_fn=_fake_standard_split):
        train, val, test = (classes(mode, "minimal_val") for mode in ("train", "val", "test"))
        plain_train, plain_test = (classes(mode, "minimal") for mode in ("train", "test"))
        with pytest.raises(ValueError, match="has no meta-validation classes.*minimal_val"):
            classes("val", "minimal")
    # small1 = alphabets 0 and 1; small2 = 1 and 2: validation is small1's alphabet that small2
    # lacks (0), training the rest of small1 (1), the meta-test set stays small2's alphabet 2.
    assert train[1].tolist() == [1, 1] and val[1].tolist() == [0, 0] and test[1].tolist() == [2, 2]
    np.testing.assert_array_equal(np.concatenate([val[0], train[0]]), plain_train[0])
    np.testing.assert_array_equal(test[0], plain_test[0])


def _fake_zip(folder, split: str, alphabets: tuple[str, ...], characters: int = 2) -> None:
    """``images_background_{split}.zip`` in the original layout (``alphabet/character/*.png``
    under a folder of the zip's name) of 105x105 black-on-white drawings by `_fake_drawing`."""
    import io
    import zipfile

    from PIL import Image

    with zipfile.ZipFile(folder / f"images_background_{split}.zip", "w") as archive:
        for a, alphabet in enumerate(alphabets):
            for c in range(characters):
                label = a * characters + c
                for d in range(omniglot_builder.DRAWINGS_PER_CHARACTER):
                    png = io.BytesIO()
                    Image.fromarray(_fake_drawing(label, d)[:, :, 0]).save(png, format="PNG")
                    name = f"images_background_{split}/{alphabet}/character{c + 1:02d}/{d:02d}.png"
                    archive.writestr(name, png.getvalue())


@pytest.mark.parametrize("size", [84, 105])
def test_image_size_is_configurable(tmp_path, size):
    """Each size is its own prepared folder; 105 is the zips' own size (no resampling)."""
    _fake_zip(tmp_path, "small1", ("Alpha", "Beta"))
    _fake_zip(tmp_path, "small2", ("Beta", "Gamma"))
    kwargs = dict(manual_dir=str(tmp_path), data_dir=str(tmp_path / "tfds"), image_size=size)
    images, alphabets = omniglot_splits.omniglot_classes_and_alphabets("train", "minimal", **kwargs)
    assert images.shape == (4, 20, size, size, 1) and alphabets.tolist() == [0, 0, 1, 1]
    # Class 3 (Beta's second character) holds its 20 drawings, in the prepared files' order.
    drawings = [_fake_drawing(3, d) for d in range(omniglot_builder.DRAWINGS_PER_CHARACTER)]
    expected = [
        255 - x[:, :, :1] if size == 105 else preprocess.omniglot_image(x, size) for x in drawings
    ]
    assert sorted(x.tobytes() for x in images[3]) == sorted(x.tobytes() for x in expected)
    assert os.path.isdir(tmp_path / "tfds" / "omniglot_zips" / f"{size}x{size}x1")
    episode = omniglot_episodes("train", "minimal", episodes=Episodes(ways=2, queries=1), **kwargs)
    assert jax.jit(episode.sample_task)(jax.random.key(0)).query.x.shape == (2, size, size, 1)
