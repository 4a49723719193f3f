"""timm's private names the zoo relies on, checked in one place: a timm upgrade that moves or reshapes one of
them fails here by name, not deep inside a model or a save."""
import inspect

import pytest
import timm

from dcls_zoo.models import _timm_private

# name -> the parameters the zoo passes (by keyword or position, in this order)
EXPECTED_PARAMETERS = {
    "feature_take_indices": ["num_features", "indices"],
    "download_cached_file": ["url", "check_hash", "progress"],
    "load_model_config_from_path": ["model_path"],
    "save_config_for_hf": ["model", "config_path", "model_config", "model_args", "data_config"],
    "resolve_pretrained_source": ["pretrained_cfg"],
}


def test_the_adapter_exports_exactly_what_is_checked():
    assert sorted(_timm_private.__all__) == sorted(EXPECTED_PARAMETERS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_private_timm_name_still_takes_our_arguments(name):
    function = getattr(_timm_private, name)
    params = list(inspect.signature(function).parameters)
    want = EXPECTED_PARAMETERS[name]
    assert params[:len(want)] == want, (
        f"timm {timm.__version__} changed {function.__module__}.{function.__name__}{inspect.signature(function)}; "
        f"the zoo calls it with {want}: update dcls_zoo/models/_timm_private.py and its callers")


def test_private_names_behave_as_the_zoo_expects(tmp_path):
    # feature_take_indices: (take_indices, max_index), negative indices counted from the end
    assert _timm_private.feature_take_indices(4, 2) == ([2, 3], 3)
    assert _timm_private.feature_take_indices(4, [0, -1]) == ([0, 3], 3)
    # resolve_pretrained_source: a cfg with only a file gives ("file", path)
    from timm.models import PretrainedCfg

    path = str(tmp_path / "w.pth")
    assert _timm_private.resolve_pretrained_source(PretrainedCfg(file=path).to_dict()) == ("file", path)


def test_no_module_of_the_package_imports_timm_privates_elsewhere():
    import pathlib
    import re

    import dcls_zoo

    root = pathlib.Path(dcls_zoo.__file__).parent
    private = re.compile(r"^\s*(from|import)\s+timm(\.\w+)*\._\w+", re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "_timm_private.py" and private.search(p.read_text(encoding="utf-8"))]
    assert offenders == [], f"private timm imports outside models/_timm_private.py: {offenders}"
