"""Every registered learner on every registered meta-model (`metax.learner.registry`): the
shared smoke test where the learner accepts the meta-model, a clear refusal where not; and a
learner defined in a module of its own appears in the table and the smoke test with no other
edit."""

import importlib.util
import sys
import textwrap

import pytest

from metax import testing
from metax.learner import compatibility
from metax.learner.registry import LEARNERS
from metax.meta_models.registry import META_MODELS

PAIRS = [
    (learner, meta_model)
    for learner, entry in sorted(LEARNERS.items())
    if entry.takes == "meta_model"
    for meta_model in sorted(META_MODELS)
]
MODEL_LEARNERS = sorted(name for name, entry in LEARNERS.items() if entry.takes == "model")


@pytest.mark.parametrize("learner_name, meta_model_name", PAIRS)
def test_learner_on_meta_model_passes_the_smoke_test_or_refuses(learner_name, meta_model_name):
    entry, meta_model = LEARNERS[learner_name], META_MODELS[meta_model_name].example()
    try:
        compatibility.build_example(entry, meta_model)
    except ValueError as error:
        assert f"{learner_name} cannot meta-learn" in str(error), error
        return
    testing.registered_learner_smoke_test(learner_name, meta_model_name)


@pytest.mark.parametrize("learner_name", MODEL_LEARNERS)
def test_learner_on_an_embedding_model_passes_the_smoke_test(learner_name):
    testing.registered_learner_smoke_test(learner_name)


def test_a_learner_in_its_own_module_is_in_the_table_and_the_smoke_test(tmp_path, monkeypatch):
    """A user's learner, one module: the registry decorator is the only connection."""
    source = '''
        import optax
        from metax import learner
        from metax.learner.registry import register_learner


        @register_learner(
            example=lambda meta_model, **kw: halved_maml(meta_model, **kw),
            label="`halved_maml` (a user's)",
        )
        def halved_maml(meta_model, inner_optimizer=optax.sgd(0.05)):
            """First-order MAML with half the outer step: a new learner built from metax's."""
            return learner.maml(
                meta_model, inner_optimizer, optax.sgd(0.05), num_inner_steps=2, first_order=True
            )
    '''
    (tmp_path / "user_learners.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("metax.learner.registry.LEARNERS", dict(LEARNERS))
    import metax.learner.registry as registry

    spec = importlib.util.find_spec("user_learners")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "user_learners", module)
    spec.loader.exec_module(module)
    assert "halved_maml" in registry.LEARNERS
    monkeypatch.setattr(compatibility, "LEARNERS", registry.LEARNERS)
    monkeypatch.setattr(testing, "LEARNERS", registry.LEARNERS)
    table = compatibility.markdown_table()
    row = next(line for line in table.splitlines() if "halved_maml" in line)
    assert row.startswith("| `halved_maml` (a user's) | yes | yes |"), row
    testing.registered_learner_smoke_test("halved_maml", "learned_init")
