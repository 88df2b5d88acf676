"""The few-shot image builders and loaders, run on small fake data in each dataset's real file
layout (tests/helpers/fake_datasets.py): splits, class contents, episodes on device and from
the host, the host-fed training path, and the errors for missing files."""

import dataclasses
import json
import sys

import jax
import numpy as np
import pytest

from metax import data
from metax.data import builders, datasets, host
from metax.train import sharding
from tests.helpers import fake_datasets as fake


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return fake.mini_imagenet(str(root / "mini")), str(root / "tfds")


def episode_kwargs(mini, **overrides):
    manual, data_dir = mini
    return dict(
        episodes=data.Episodes(ways=3, shots=1, queries=2),
        image_size=10,
        manual_dir=manual,
        data_dir=data_dir,
        **overrides,
    )


def check_episode(batch, split: builders.SplitSource, ways: int, shots: int, queries: int):
    """Every image of class position k is an image of the episode's k-th class, none twice."""
    for part, per_class in ((batch.support, shots), (batch.query, queries)):
        x = np.asarray(part.x)
        assert x.shape[0] == ways * per_class
        np.testing.assert_array_equal(part.y, np.repeat(np.arange(ways), per_class))
        # Channel 1 holds the class's position in its split, channel 0 its image index.
        classes = np.asarray(part.info["classes"])
        x = np.round(x * 255) if x.dtype != np.uint8 else x
        np.testing.assert_array_equal(x[:, 0, 0, 1], np.repeat(classes, per_class))
    images = np.concatenate([batch.support.x, batch.query.x])
    keys = {(int(round(float(i[0, 0, 1]) * 255)), float(i[0, 0, 0])) for i in images}
    assert len(keys) == len(images)  # Distinct images.


def test_mini_imagenet_splits_follow_the_csv_files(mini):
    config = builders.ImageConfig(10, 10, 3)
    builder = builders.prepare(builders.MiniImageNet, config, *mini)
    splits = {s: builders.SplitSource(builder, s) for s in builders.SPLIT_NAMES}
    assert [len(s.names) for s in splits.values()] == [4, 3, 3]
    assert splits["val"].names == ["n00000004", "n00000005", "n00000006"]
    arrays = splits["train"].class_arrays()
    assert arrays.shape == (4, 6, 10, 10, 3) and arrays.dtype == np.uint8
    np.testing.assert_array_equal(arrays[2, 5], fake.fake_image(2, 5))  # Class 2, image 5.


@pytest.mark.parametrize("feed", ["device", "host"])
def test_mini_imagenet_episodes_hold_the_drawn_classes(mini, feed):
    sampler = datasets.mini_imagenet(feed=data.Feed(on=feed), mode="train", **episode_kwargs(mini))
    split = builders.SplitSource(
        builders.prepare(builders.MiniImageNet, builders.ImageConfig(10, 10, 3), *mini), "train"
    )
    for seed in range(3):
        if feed == "device":
            batch = jax.jit(sampler.sample_task)(jax.random.key(seed))
        else:
            batch = sampler.sample_task(host.task_rng(0, 1, seed, 0))
        check_episode(batch, split, 3, 1, 2)


def test_tiered_imagenet_has_unequal_classes_and_is_host_fed(tmp_path):
    root = fake.tiered_imagenet(str(tmp_path / "tiered"))
    kw = dict(image_size=10, manual_dir=root, data_dir=str(tmp_path))
    sampler = datasets.tiered_imagenet("test", data.Episodes(ways=2, shots=2, queries=3), **kw)
    assert isinstance(sampler, host.HostTaskSampler)
    split = builders.SplitSource(
        builders.prepare(
            builders.TieredImageNet, builders.ImageConfig(10, 10, 3), root, str(tmp_path)
        ),
        "test",
    )
    np.testing.assert_array_equal(split.counts, [9, 6, 6])
    for step in range(4):
        check_episode(sampler.sample_task(host.task_rng(0, 1, step, 0)), split, 2, 2, 3)
    with pytest.raises(ValueError, match=r"needs equal classes. Use Feed\(on='host'\)"):
        episodes = data.Episodes(ways=2, shots=2, queries=3)
        datasets.tiered_imagenet("test", episodes, data.Feed(on="device"), **kw)
    with pytest.raises(ValueError, match="only 6 images per class"):
        datasets.tiered_imagenet("test", data.Episodes(ways=2, shots=2, queries=5), **kw)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "python"])
def test_cifar_fs_and_fc100_class_splits(tmp_path, binary):
    root, superclass = fake.cifar100(str(tmp_path / "cifar"), binary=binary)
    sizes = {}
    for variant in ("cifar_fs", "fc100"):
        config = builders.ImageConfig(32, 32, 3, tag=variant, variant=variant)
        builder = builders.prepare(builders.CifarFewShot, config, root, str(tmp_path))
        splits = {s: builders.SplitSource(builder, s) for s in builders.SPLIT_NAMES}
        sizes[variant] = [len(s.names) for s in splits.values()]
        assert sorted(sum((s.names for s in splits.values()), [])) == sorted(
            builders.CIFAR100_CLASSES
        )
        test = splits["test"]
        arrays = test.class_arrays()  # 5 train + 1 test images per class in the fake archive.
        assert arrays.shape == (20, 6, 32, 32, 3)
        fine = [builders.CIFAR100_CLASSES.index(n) for n in test.names]
        np.testing.assert_array_equal(arrays[:, :, 0, 0, 0], np.repeat([fine], 6, 0).T)
        np.testing.assert_array_equal(arrays[0, :, 0, 0, 1], np.arange(6))
        if variant == "cifar_fs":
            assert set(test.names) == set(builders.CIFAR_FS_CLASSES["test"])
        else:  # FC100 splits by the archive's superclasses.
            assert set(superclass[fine]) == set(builders.FC100_SUPERCLASSES["test"])
    assert sizes == {"cifar_fs": [64, 16, 20], "fc100": [60, 20, 20]}


def test_image_folder_with_a_user_split(tmp_path):
    root = fake.image_folder(str(tmp_path / "folder"))
    classes = {"train": ["c0", "c1", "c2"], "val": ["c3"], "test": ["c4", "c5"]}
    sampler = datasets.image_folder(
        root=root,
        classes=classes,
        mode="test",
        episodes=data.Episodes(ways=2, shots=2, queries=3),
        image_size=(8, 12),
        channels=1,
        data_dir=str(tmp_path),
    )
    batch = jax.jit(sampler.sample_task)(jax.random.key(0))
    assert batch.support.x.shape == (4, 8, 12, 1)
    with pytest.raises(ValueError, match="share classes"):
        datasets.image_folder(root=root, classes={"train": ["c0"], "test": ["c0"]})
    with pytest.raises(TypeError, match=r"feed must be a metax.data.Feed\(on='device' or 'host'\)"):
        datasets.image_folder(root=root, classes=classes, feed="host")  # metax 0.2's form.
    with pytest.raises(FileNotFoundError, match=r"no class folder \['c9'\]"):
        datasets.image_folder(root=root, classes={"train": ["c9"]}, data_dir=str(tmp_path))


def test_missing_files_say_which_and_where(tmp_path, monkeypatch):
    monkeypatch.delenv("METAX_MINIIMAGENET_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"images/ .*train.csv.*METAX_MINIIMAGENET_DIR"):
        datasets.mini_imagenet()
    with pytest.raises(FileNotFoundError, match="no images/ folder"):
        datasets.mini_imagenet(manual_dir=str(tmp_path), data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="cifar-100-binary.tar.gz"):
        datasets.cifar_fs(manual_dir=str(tmp_path), data_dir=str(tmp_path / "tfds"))


def test_host_batches_are_the_same_on_any_mesh_and_lifted_sharded(mini):
    sampler = datasets.mini_imagenet(
        feed=data.Feed(on="host"), mode="train", **episode_kwargs(mini)
    )
    mesh = sharding.task_mesh()
    assert mesh.size == 8
    batches = host.meta_batches(
        sampler, seed=3, stream=1, first_step=5, last_step=7, num_tasks=8, mesh=mesh
    )
    for step, batch in zip((5, 6), batches, strict=True):
        assert batch.support.x.sharding == sharding.task_sharded(mesh)
        expected = host.host_meta_batch(sampler, 3, 1, step, np.arange(8))
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(batch), expected)
    # Tasks are built one by one: a process building tasks 4..7 gets the global batch's.
    whole = host.host_meta_batch(sampler, 3, 1, 5, np.arange(8))
    share = host.host_meta_batch(sampler, 3, 1, 5, np.arange(4, 8))
    jax.tree.map(np.testing.assert_array_equal, share, jax.tree.map(lambda x: x[4:], whole))


def test_host_fed_training_resumes_exactly(mini, tmp_path):
    """4 steps in one go = 2 steps then 2 more after a restart (the host feed restarts at the
    checkpoint's step); validation selection and the final meta-test report work host-fed."""
    import optax

    from metax import energy, learner, meta_models, nn
    from metax.train import Checkpoints, Evaluation, TrainConfig, Validation, train

    model = nn.sequential(body=nn.conv4(num_channels=4, num_blocks=2), head=nn.linear(3))
    maml = learner.maml(
        meta_models.learned_init(model, loss_fn=energy.cross_entropy),
        inner_optimizer=optax.sgd(0.1),
        num_inner_steps=1,
    )
    train_sampler, val_sampler, eval_sampler = (
        datasets.mini_imagenet(feed=data.Feed(on="host"), mode=mode, **episode_kwargs(mini))
        for mode in ("train", "val", "test")
    )
    config = TrainConfig(
        learner=maml,
        train_sampler=train_sampler,
        meta_batch_size=8,
        num_steps=4,
        log_every=2,
        evaluation=Evaluation(sampler=eval_sampler, every=2, inner_steps=(1,), num_tasks=8),
        validation=Validation(val_sampler, metric="val/steps_1/accuracy"),
        checkpoints=Checkpoints(every=2),
    )
    straight = train(config, str(tmp_path / "a"))
    train(dataclasses.replace(config, num_steps=2), str(tmp_path / "b"))
    resumed = train(config, str(tmp_path / "b"))
    for name in straight:
        if name.startswith(("eval/", "val/", "best/")):
            assert resumed[name] == straight[name], name
    assert np.isfinite(straight["eval/steps_1/loss"]) and "best/step" in straight


def test_tiny_config_runs_host_fed_on_two_processes_each_building_its_share(mini, tmp_path):
    """configs/maml_miniimagenet_tiny.gin (maml_miniimagenet.gin, shrunk) on the fake files,
    host-fed, as 2 processes x 2 devices on 127.0.0.1 (a 2-host pod slice), as a user runs
    it: each process builds only the 4 tasks of its own devices, the run ends with the
    validation-selected meta-test accuracy and its 95% CI. (The device-fed path runs through
    the launcher in tests/metax/data/test_omniglot.py.)"""
    from tests.helpers.runs import free_port, run_processes

    manual, data_dir = mini
    workdir, port = tmp_path / "run", free_port()
    commands = [
        [
            sys.executable,
            "-m",
            "launch.train",
            "--gin_file=configs/maml_miniimagenet_tiny.gin",
            f"--workdir={workdir}",
            "--gin_bindings=metax.data.Feed.on = 'host'",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            "--verbosity=0",
        ]  # fmt: skip
        for i in range(2)
    ]
    env = dict(METAX_MINIIMAGENET_DIR=manual, METAX_TFDS_DIR=data_dir)
    outputs = run_processes(commands, env_vars=env, devices_per_process=2)
    for i, output in enumerate(outputs):
        share = ",".join(map(str, range(4 * i, 4 * i + 4)))
        assert f"process {i} builds tasks {share} of each meta-batch of 8" in output, output[-3000:]
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["eval/num_tasks"] == 8 and final["best/step"] in (1.0, 2.0)
    assert 0 <= final["eval/steps_1/accuracy"] <= 1
    assert np.isfinite(final["eval/steps_1/accuracy_ci95"])
    assert "metax: best checkpoint by validation: step" in outputs[0]
