"""metax: meta-learning in JAX with pure functions.

``import metax`` loads the functional core (nn, energy, data, meta_models, learner) and never
TensorFlow; the training loop (`metax.train`) imports its heavier dependencies when called.
"""

from metax import data, energy, learner, meta_models, nn
from metax.data import Dataset, MetaBatch, TaskSampler
from metax.learner import Learner, MetaState
from metax.meta_models import MetaModel
from metax.nn import Model

__version__ = "0.2.0"

__all__ = [
    "Dataset",
    "Learner",
    "MetaBatch",
    "MetaModel",
    "MetaState",
    "Model",
    "TaskSampler",
    "data",
    "energy",
    "learner",
    "meta_models",
    "nn",
]
