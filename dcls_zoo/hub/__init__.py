"""Hub-ready folders (safetensors + config + card), model cards, conversion of original checkpoints, pushing.

    >>> from dcls_zoo.hub import save_folder, load_folder, push_folder
    >>> save_folder(model, "out/dcls_convnext_tiny.bilinear_in1k")        # config.json, model.safetensors, README.md
    >>> model = load_folder("out/dcls_convnext_tiny.bilinear_in1k")       # or timm.create_model("local-dir:out/...")
    >>> push_folder("out/dcls_convnext_tiny.bilinear_in1k", "dcls-zoo/dcls_convnext_tiny.bilinear_in1k")

Folders carry `model.safetensors.sha256`; every loader here and `push_folder` check it (see `save`), and
`plan_folder` lists what a push would send and skip without sending anything.
"""
from .cards import (  # noqa: F401
    FACTS,
    HUB_ORG,
    CardFacts,
    ModelFacts,
    hub_id,
    model_card,
    model_facts,
    published_models,
    write_cards,
)
from .convert import ConversionReport, convert_checkpoint  # noqa: F401
from .push import (  # noqa: F401
    PushPlan,
    check_can_push,
    check_folder,
    pickle_kind,
    plan_folder,
    publish_all,
    push_folder,
)
from .save import (  # noqa: F401
    CHECKSUM_NAME,
    apply_tie_map,
    check_state_dict_fits,
    load_folder,
    load_state_dict_file,
    load_weights,
    save_folder,
    save_state_dict,
)
