"""The old module paths of issue 27's moves work for one release: each warns (DeprecationWarning, naming
the new path) and gives the very objects of the new modules."""
import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import importlib
import sys

import pytest

from test_architecture import DEPRECATED


@pytest.mark.parametrize("old", sorted(DEPRECATED))
def test_old_path_warns_and_reexports_the_new_objects(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=DEPRECATED[old][0].rsplit(".", 1)[0]):
        shim = importlib.import_module(old)
    public = [name for name in vars(shim) if not name.startswith("_") and name != "warnings"]
    assert public
    for name in public:
        homes = [importlib.import_module(new) for new in DEPRECATED[old] if hasattr(importlib.import_module(new), name)]
        assert homes, f"{old}.{name} is not in {DEPRECATED[old]}"
        assert getattr(shim, name) is getattr(homes[0], name)


def test_evaluate_shim_keeps_every_name_the_module_had():
    sys.modules.pop("tfrec_towers.evaluate", None)
    with pytest.warns(DeprecationWarning):
        shim = importlib.import_module("tfrec_towers.evaluate")
    for name in ("MISSING", "target_ranks", "metrics_from_ranks", "catalog_metrics", "top_k", "recall_ndcg",
                 "user_catalog_metrics", "evaluate_users", "evaluate_run", "export_version_dir",
                 "saved_model_answers", "evaluate_saved_model", "format_metrics", "embed_catalog", "embed_events"):
        assert hasattr(shim, name), name
