"""The examples in the docstrings of the classes users construct run, and pass: an example that goes
stale fails here, and one that is deleted fails the count."""
import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import doctest
import importlib
import importlib.util

import pytest

#: (module, class) of every public class users construct, each with at least one ``>>>`` example.
EXAMPLES = [
    ("tfrec_towers.features.spec", "FeatureSpec"),
    ("tfrec_towers.config", "Config"),
    ("tfrec_towers.tasks.retrieval", "Retrieval"),
    ("tfrec_towers.tasks.chain", "Temperature"),
    ("tfrec_towers.tasks.chain", "LogQCorrection"),
    ("tfrec_towers.tasks.chain", "RemoveAccidentalHits"),
    ("tfrec_towers.tasks.samtone", "SameTowerNegatives"),
    ("tfrec_towers.tasks.bilateral_softmax_loss", "BilateralSoftmaxLoss"),
    ("tfrec_towers.tasks.cosine_contrastive_loss", "CosineContrastiveLoss"),
    ("tfrec_towers.tasks.margin_loss", "HingeLoss"),
    ("tfrec_towers.tasks.pointwise_loss", "WeightedBinaryCrossEntropy"),
    ("tfrec_towers.tasks.pointwise_loss", "FocalLoss"),
    ("tfrec_towers.export.indexes", "BruteForceIndex"),
    ("tfrec_towers.export.indexes", "ScannIndex"),
    ("tfrec_towers.export.portable_index", "PortableIndex"),
    ("tfrec_towers.serving.client", "RetrievalClient"),
]
NEEDS = {"ScannIndex": "scann"}  # an optional extra the example needs


@pytest.mark.parametrize("module_name, class_name", EXAMPLES, ids=[c for _, c in EXAMPLES])
def test_docstring_example_runs(module_name, class_name):
    if class_name in NEEDS and importlib.util.find_spec(NEEDS[class_name]) is None:
        pytest.skip(f"{class_name}'s example needs {NEEDS[class_name]}")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    # The class's own docstring only (not its methods'), run in a fresh copy of the module's globals.
    tests = doctest.DocTestFinder(recurse=False).find(cls, class_name, module=module, globs=dict(vars(module)))
    examples = sum(len(t.examples) for t in tests)
    assert examples >= 1, f"{module_name}.{class_name} has no docstring example"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {class_name} failed (see stdout)"


def test_every_listed_class_is_public():
    for module_name, class_name in EXAMPLES:
        assert class_name in importlib.import_module(module_name).__all__, (module_name, class_name)
