"""The only door to timm's private modules: everything the zoo uses from `timm.*._*` is imported here.

timm does not promise these names across releases. Keeping them in one module means a timm upgrade breaks in
one place, and `tests/test_timm_private.py` checks each name and the parameters we call it with, so the upgrade
fails loudly there rather than deep inside a model. Public timm API (`timm.models.checkpoint_seq`,
`build_model_with_cfg`, `get_pretrained_cfg`, ...) is imported directly where it is used.
"""
from timm.models._builder import _resolve_pretrained_source as resolve_pretrained_source
from timm.models._features import feature_take_indices
from timm.models._hub import download_cached_file, load_model_config_from_path, save_config_for_hf

__all__ = ["download_cached_file", "feature_take_indices", "load_model_config_from_path",
           "resolve_pretrained_source", "save_config_for_hf"]
