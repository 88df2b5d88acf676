"""Where prepared datasets live and where their source files are, and preparing them once
when several hosts share one folder. Light: imports neither TFDS nor TensorFlow."""

import os

TFDS_DIR_ENV = "METAX_TFDS_DIR"  # Where prepared datasets live: see `prepared_data_dir`.
SPLIT_NAMES = ("train", "val", "test")  # The class sets of a prepared image dataset.


def prepared_data_dir(data_dir: str | None = None) -> str:
    """Where prepared datasets live: ``data_dir`` if given, else ``$METAX_TFDS_DIR``, else
    TFDS's own ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (TFDS's default)."""
    path = (
        data_dir
        or os.environ.get(TFDS_DIR_ENV)
        or os.environ.get("TFDS_DATA_DIR")
        or "~/tensorflow_datasets"
    )
    return os.path.expanduser(path)


def source_dir(path: str | None, env: str, needs: str) -> str:
    """The folder of a dataset's source files: ``path``, else ``$env``; raises a
    FileNotFoundError saying what to put there (``needs``) when neither is given."""
    path = path or os.environ.get(env)
    if path is None:
        raise FileNotFoundError(f"{needs} (no manual_dir given and ${env} is not set)")
    return os.path.expanduser(path)


def prepare_once_per_host(prepare_fn):
    """Runs ``prepare_fn`` on process 0 first, then on the others: several hosts may share
    the data folder (NFS, GCS), and two hosts preparing the same files would race."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return prepare_fn()
    result = prepare_fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("metax: dataset prepared on process 0")
    return prepare_fn() if result is None else result
