"""What the tests share (``from tests.helpers import ...``; no test module imports another):

* `gradcheck`: the meta-gradient a learner applies, finite differences, directional
  derivatives, closed-form MAML on linear regression.
* `runs`: the launcher in subprocesses (one or several processes), the Python API, reading a
  workdir.
* `xla_flags`: XLA_FLAGS for test subprocesses.
* `fake_datasets`: image datasets in their real file layouts, with fake images.
* `learners`, `multihost_worker`: a few meta-steps of a learner on any mesh, and the script
  that runs them as one process of several.
"""
