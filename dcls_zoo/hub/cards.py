"""Model cards of the published models, generated from their timm pretrained cfgs and a table of card-only facts.

Each fact has one home. The family's `default_cfgs` (`timm.models.get_pretrained_cfg(name)`) hold the checkpoint
(`url`), the licence id (`license`), the original code (`origin_url`) and the papers (`paper_ids`, the first one
titled by `paper_name`); the model built from its name gives the counts, the input size and the DCLS layers.
`FACTS` holds only what neither can: the card's title, the data set, the original's reported metric and where the
licence statement comes from. A row is published, and gets a card in `hub_cards/<name>/README.md`, once its model
name is registered (its family module imported by `import dcls_zoo`); `scripts/make_cards.py` writes them and
`tests/test_cards.py` fails if the committed cards differ from a fresh generation.

Hub ids follow one scheme: `dcls-zoo/<architecture>.<tag>` (`hub_id()`), e.g.
`dcls-zoo/dcls_convformer_s18.bilinear_in1k`, the timm convention of `timm/<architecture>.<tag>`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch.nn as nn

from ._library import model_library

__all__ = [
    "HUB_ORG", "CardFacts", "ModelFacts", "FACTS", "hub_id", "model_facts", "published_models", "model_card",
    "card_data", "write_cards", "diff_cards", "unique_parameter_count",
]

HUB_ORG = "dcls-zoo"


def hub_id(name: str, org: str = HUB_ORG) -> str:
    """The Hub repo id of a published model: '<org>/<architecture>.<tag>'."""
    return f"{org}/{name}"


@dataclass(frozen=True)
class CardFacts:
    """What the card of one published checkpoint says that its pretrained cfg cannot hold.

    `metric_value` is the original's own reported number (None where none is published), never one measured here;
    `metric_spread` its reported +- (None where none is given). `license_name` is the Hub's name for a licence id
    'other'.
    """

    name: str                      # '<architecture>.<tag>' as registered
    title: str                     # human-readable model name; the DCLS grid and the data set are appended
    dataset: str                   # Hub data set id
    dataset_name: str
    metric: str                    # Hub metric id
    metric_value: Optional[float]
    metric_note: str               # what the number is and where it was reported
    license_note: str              # where the licence statement comes from
    metric_spread: Optional[float] = None
    task: str = "image-classification"
    license_name: Optional[str] = None
    base_model: Optional[str] = None
    tags: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ModelFacts(CardFacts):
    """A `CardFacts` row completed from the model's pretrained cfg: everything a card states about the checkpoint."""

    paper: str = ""                # title of the first paper
    arxiv: str = ""                # arXiv id of the first paper
    extra_arxiv: tuple[str, ...] = ()
    original_repo: str = ""        # URL of the authors' code
    checkpoint_url: str = ""       # the authors' checkpoint this model is converted from
    license: str = ""              # Hub licence id
    license_link: Optional[str] = None
    library: str = "timm"


_IN1K = dict(dataset="imagenet-1k", dataset_name="ImageNet-1k", metric="accuracy")
_AS2M = dict(dataset="audioset", dataset_name="AudioSet-2M", metric="mAP", task="audio-classification")
_IN1K_TOP1 = ("Top-1 (%) on the ImageNet-1k validation set at 224x224, EMA weights, as reported in the original "
              "README")
_AS2M_MAP = "mAP (%) on the AudioSet evaluation set, 128x1001 log-mel input, as reported in the original README"
_NO_TOP1 = "no top-1 number for this checkpoint was found in public sources"
_MIT_CONVNEXT_DCLS = "stated by the original repository, K-H-Ismail/ConvNeXt-dcls"
_MIT_AUDIO = "stated by the original repository's LICENSE, K-H-Ismail/DCLS-Audio"
_UNSTATED = dict(
    license_name="unstated",
    license_note="the original repository's README says MIT but the repository holds no LICENSE file, and the "
                 "Zenodo record's terms were not checked here; read the record before redistributing",
)

FACTS: tuple[CardFacts, ...] = (
    *(CardFacts(name=f"dcls_convnext_{size}.bilinear_in1k", title=f"ConvNeXt-{letter}-dcls with bilinear DCLS",
                **_IN1K, metric_value=top1, metric_note=_IN1K_TOP1, license_note=_MIT_CONVNEXT_DCLS)
      for size, letter, top1 in (("tiny", "T", 82.5), ("small", "S", 83.7), ("base", "B", 84.1))),
    CardFacts(
        name="dcls_gauss_convnext_tiny.gauss_in1k", title="ConvNeXt-T with Gaussian DCLS", **_IN1K,
        metric_value=None, metric_note="the paper's abstract reports Gaussian DCLS above bilinear DCLS on "
                                       "ImageNet-1k; no per-model number was found in public sources",
        license_note="stated by the original DCLS repository's LICENSE",
    ),
    *(CardFacts(name=name, title=title, **_IN1K, metric_value=None, metric_note=_NO_TOP1, **_UNSTATED)
      for name, title in (
          ("dcls_convformer_s18.bilinear_in1k", "ConvFormer-S18 with bilinear DCLS"),
          ("dcls_caformer_s18.bilinear_in1k", "CAFormer-S18 with bilinear DCLS"),
          ("dcls_fastvit_sa24.bilinear_in1k", "FastViT-SA24 with bilinear DCLS"),
          ("dcls_fastvit_sa36.bilinear_in1k", "FastViT-SA36 with bilinear DCLS"),
          ("dcls_resnet50.bilinear_in1k", "ResNet-50 with DCLS 3x3 convolutions"),
      )),
    CardFacts(name="dcls_convnext_audio_tiny.as2m", title="ConvNeXt-T with Gaussian DCLS", **_AS2M,
              metric_value=45.52, metric_spread=0.05, metric_note=_AS2M_MAP, license_note=_MIT_AUDIO,
              base_model=hub_id("dcls_gauss_convnext_tiny.gauss_in1k")),
    CardFacts(name="dcls_convformer_audio_s18.as2m", title="ConvFormer-S18 with Gaussian DCLS", **_AS2M,
              metric_value=43.68, metric_spread=0.02, metric_note=_AS2M_MAP, license_note=_MIT_AUDIO),
    CardFacts(name="dcls_fastvit_audio_sa24.as2m", title="FastViT-SA24 with Gaussian DCLS", **_AS2M,
              metric_value=44.4, metric_spread=0.07, metric_note=_AS2M_MAP, license_note=_MIT_AUDIO),
    CardFacts(name="convformer_audio_s18.as2m", title="ConvFormer-S18 baseline (7x7 depthwise convolutions)",
              **_AS2M, metric_value=43.14, metric_spread=0.03, metric_note=_AS2M_MAP, license_note=_MIT_AUDIO),
)

_FACTS_BY_NAME = {f.name: f for f in FACTS}

_CARD_CFG_FIELDS = ("url", "license", "origin_url", "paper_ids", "paper_name")


def _paper_ids(value: Any) -> tuple[str, ...]:
    ids = (value,) if isinstance(value, str) else tuple(value or ())
    return tuple(i.removeprefix("arXiv:") for i in ids)


def _record_page(url: str) -> str:
    # the licence of a Zenodo file is stated on its record page, '<record>/files/<name>' -> '<record>'
    record, sep, _ = url.partition("/files/")
    if not sep or "zenodo.org/" not in record:
        raise ValueError(f"licence 'other' needs a page stating it; {url!r} is not a Zenodo file URL")
    return record


def model_facts(name: str) -> ModelFacts:
    """The facts row of the published model `name`, completed from its registered pretrained cfg."""
    from timm.models import get_pretrained_cfg

    row = _FACTS_BY_NAME[name]
    registered = get_pretrained_cfg(name, allow_unregistered=False)
    if registered is None:
        raise ValueError(f"{name} has a facts row but no registered pretrained cfg (import its family module)")
    cfg = {k: getattr(registered, k) for k in _CARD_CFG_FIELDS}
    missing = [k for k in _CARD_CFG_FIELDS if not cfg[k]]
    if missing:
        raise ValueError(f"the pretrained cfg of {name} has no {', '.join(missing)}; a published card needs them")
    arxiv, *extra = _paper_ids(cfg["paper_ids"])
    return ModelFacts(
        **{k: getattr(row, k) for k in CardFacts.__dataclass_fields__},
        paper=cfg["paper_name"], arxiv=arxiv, extra_arxiv=tuple(extra), original_repo=cfg["origin_url"],
        checkpoint_url=cfg["url"], license=cfg["license"],
        license_link=_record_page(cfg["url"]) if cfg["license"] == "other" else None,
    )


def _registered(name: str) -> bool:
    import timm
    from timm.models import get_pretrained_cfg

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        return False
    return not tag or get_pretrained_cfg(name, allow_unregistered=False) is not None


def published_models() -> list[ModelFacts]:
    """Facts of the rows whose model is registered now (its family imported), in table order."""
    out = []
    for row in FACTS:
        try:
            ok = _registered(row.name)
        except RuntimeError:
            ok = False
        if ok:
            out.append(model_facts(row.name))
    return out


def unique_parameter_count(model: nn.Module) -> int:
    """Parameters counted once even when shared (tied positions count once), as the papers count them."""
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def _meta_model(name: str) -> nn.Module:
    import timm

    # The meta device gives shapes (hence counts) without allocating or initialising weights; cards only read it.
    return timm.create_model(name, pretrained=False, device="meta")


def _dcls_configs(model: nn.Module) -> dict[str, int]:
    """{'<version>, <grid> grid, <count> elements': number of layers} of the model's DCLS layers."""
    from dcls_zoo.layers import DclsNd

    configs: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, DclsNd):
            key = (f"{module.version}, {'x'.join(map(str, module.dilated_kernel_size))} grid, "
                   f"{module.kernel_count} elements")
            configs[key] = configs.get(key, 0) + 1
    return configs


def _dcls_summary(model: nn.Module) -> Optional[str]:
    from dcls_zoo.layers import DclsNd

    configs = _dcls_configs(model)
    if not configs:
        return None
    shared = len({id(m.P) for m in model.modules() if isinstance(m, DclsNd)})
    return "; ".join(f"{n} layers {config}" for config, n in configs.items()) + f"; {shared} shared position tensors"


def _title(facts: ModelFacts, model: nn.Module) -> str:
    # the DCLS grid is read from the model, so a title cannot disagree with the layers it describes
    configs = _dcls_configs(model)
    return facts.title + (f" ({'; '.join(configs)})" if configs else "") + f", {facts.dataset_name}"


def _library_and_task(facts: Optional[ModelFacts], model: Optional[nn.Module]) -> tuple[str, str]:
    """(Hub library_name, pipeline_tag) of a card: the facts row's, else the model's library and its usual task."""
    if facts is not None:
        return facts.library, facts.task
    library = model_library(model)
    return library, "text-generation" if library == "transformers" else "image-classification"


_DCLS_OPTIMIZER = """
positions = dcls_position_parameter_names(model)  # DCLS positions/sigmas: 5x learning rate, no weight decay
groups = [
    {"params": [p for n, p in model.named_parameters() if n in positions], "lr": 5e-4, "weight_decay": 0.0},
    {"params": [p for n, p in model.named_parameters() if n not in positions], "lr": 1e-4},
]
optimizer = torch.optim.AdamW(groups, weight_decay=0.05)
# after every optimizer.step(): clamp_dcls_parameters(model)"""
_PLAIN_OPTIMIZER = """
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)"""


def _library_usage(repo_id: str, library: str, task: str, has_dcls: bool, input_size: tuple = ()) -> str:
    if library == "transformers":
        return f'''## How to use

```python
import torch
import dcls_zoo  # registers the model classes with transformers' Auto classes
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{repo_id}").eval()
input_ids = torch.tensor([[0, 1, 2, 3]])
logits = model(input_ids).logits
```

Without `dcls_zoo` installed, `trust_remote_code=True` loads the modelling code saved with the weights.

## How to fine-tune

```python
import dcls_zoo
from transformers import AutoModelForSequenceClassification

model = AutoModelForSequenceClassification.from_pretrained("{repo_id}", num_labels=2)
# the classification head is new (transformers reports it as newly initialised); train as usual
```
'''
    if task == "audio-classification":
        from dcls_zoo.layers.audio import AUDIOSET_SAMPLE_RATE as SAMPLE_RATE

        channels, mels, frames = input_size
        example = (f"# x: (batch, {channels}, {mels} mel bins, {frames} frames) normalised log-mels as in the original "
                   f"pipeline\n# (or pass waveform_input=True to create_model and feed {SAMPLE_RATE // 1000} kHz mono "
                   "waveforms, (batch, samples))\nx = torch.randn(1, *model.pretrained_cfg['input_size'])")
    else:
        example = ("data_config = timm.data.resolve_model_data_config(model)\n"
                   "transform = timm.data.create_transform(**data_config, is_training=False)\n"
                   "x = transform(image).unsqueeze(0)  # image: a PIL image")
    dcls_import = ("from dcls_zoo.layers import clamp_dcls_parameters, dcls_position_parameter_names\n"
                   if has_dcls else "")
    optimizer = _DCLS_OPTIMIZER if has_dcls else _PLAIN_OPTIMIZER
    return f'''## How to use

`import dcls_zoo` must come before `timm.create_model`: timm has no plugin discovery, and importing the package
registers its architectures.

```python
import timm
import torch
import dcls_zoo  # registers the dcls-zoo architectures with timm

model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()
{example}
with torch.no_grad():
    logits = model(x)
```

## How to fine-tune

```python
import torch
import dcls_zoo
from dcls_zoo.hub import load_folder
{dcls_import}
# strict path: every key must fit; the head is replaced only when asked, with a warning naming it
model = load_folder("{repo_id}", num_classes=10, replace_head=True)
# (timm's own `timm.create_model("hf-hub:{repo_id}", pretrained=True, num_classes=10)` also works:
#  it drops the checkpoint's classifier for a new, random one, with a warning naming both sizes)
{optimizer}
```
'''


def card_data(name: str, model: Optional[nn.Module] = None, facts: Optional[ModelFacts] = None):
    """The `huggingface_hub.ModelCardData` (YAML metadata) of a card."""
    from huggingface_hub import EvalResult, ModelCardData

    if facts is None and name in _FACTS_BY_NAME:
        facts = model_facts(name)
    library, task = _library_and_task(facts, model)
    tags = [library, task, "dcls-zoo"]
    if "dcls" in name or (model is not None and _dcls_summary(model)):
        tags.append("dcls")
    tags += [t for t in (facts.tags if facts else ()) if t not in tags]
    kwargs: dict[str, Any] = dict(library_name=library, pipeline_tag=task, tags=tags, model_name=name)
    if facts is not None:
        kwargs.update(license=facts.license, datasets=[facts.dataset], metrics=[facts.metric])
        if facts.license == "other":
            kwargs.update(license_name=facts.license_name, license_link=facts.license_link)
        if facts.base_model:
            kwargs["base_model"] = facts.base_model
        if facts.metric_value is not None:
            kwargs["eval_results"] = [EvalResult(
                task_type=task, dataset_type=facts.dataset, dataset_name=facts.dataset_name,
                metric_type=facts.metric, metric_value=facts.metric_value, dataset_split="validation"
                if facts.dataset == "imagenet-1k" else "eval",
                source_name="reported by the original authors", source_url=facts.original_repo,
            )]
    else:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if cfg.get("license"):
            kwargs["license"] = cfg["license"]
    return ModelCardData(**kwargs)


def _metric_note(facts: ModelFacts) -> str:
    if facts.metric_spread is None:
        return facts.metric_note
    return f"{facts.metric_note} ({facts.metric_value:.2f} +- {facts.metric_spread:.2f})"


def model_card(name: str, model: Optional[nn.Module] = None, org: str = HUB_ORG):
    """The `huggingface_hub.ModelCard` for the model published as `<org>/<name>`.

    `model` supplies the counts (default: a meta-device instance of the registered `name`). Names without a facts
    row get a minimal card (usage only, metadata from the model).
    """
    from huggingface_hub import ModelCard

    facts = model_facts(name) if name in _FACTS_BY_NAME else None
    if model is None:
        model = _meta_model(name)
    library, task = _library_and_task(facts, model)
    repo_id = hub_id(name, org)
    data = card_data(name, model, facts)
    lines = [f"# {name}", ""]
    if facts:
        lines += [f"{_title(facts, model)}, converted from the authors' checkpoint to safetensors by "
                  f"`dcls-zoo`. The weights are the original ones; only their layout changed.", ""]
    lines += ["## Model details", ""]
    if library == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        lines += [f"- **Architecture:** `{name.partition('.')[0]}` (timm, registered by `import dcls_zoo`)"]
        summary = _dcls_summary(model)
        if summary:
            lines += [f"- **DCLS layers:** {summary}"]
        lines += [
            f"- **Parameters:** {unique_parameter_count(model):,} (shared positions counted once)",
            f"- **Input size:** {tuple(cfg.get('input_size', ()))}",
            f"- **Classes:** {getattr(model, 'num_classes', cfg.get('num_classes'))}",
        ]
        if not (cfg.get("url") or cfg.get("hf_hub_id") or cfg.get("file")):
            # the architecture has no authors' checkpoint; the weights of a saved folder are its own
            lines += [f"- **Published weights:** none from the authors for `{name.partition('.')[0]}` "
                      f"(`timm.create_model(\"{name.partition('.')[0]}\", pretrained=True)` is refused); the weights "
                      f"in this repository are its own"]
    else:
        lines += [f"- **Model type:** `{model.config.model_type}` (transformers, registered by `import dcls_zoo`)",
                  f"- **Parameters:** {unique_parameter_count(model):,}"]
    if facts:
        papers = [f"[{facts.paper}](https://arxiv.org/abs/{facts.arxiv}) (arXiv:{facts.arxiv})"]
        papers += [f"arXiv:{a}" for a in facts.extra_arxiv]
        licence = facts.license if facts.license != "other" else f"{facts.license_name} (see {facts.license_link})"
        lines += [
            f"- **Paper:** {'; '.join(papers)}",
            f"- **Original code:** {facts.original_repo}",
            f"- **Original checkpoint:** {facts.checkpoint_url}",
            f"- **Licence:** {licence} ({facts.license_note})",
            f"- **Training data:** {facts.dataset_name}",
            "",
            "## Reported results",
            "",
        ]
        if facts.metric_value is not None:
            lines += ["| data set | metric | value |", "|---|---|---|",
                      f"| {facts.dataset_name} | {facts.metric} | {facts.metric_value} |", "",
                      f"{_metric_note(facts)}; not re-measured by dcls-zoo."]
        else:
            lines += [f"None: {facts.metric_note}."]
    has_dcls = library == "timm" and _dcls_summary(model) is not None
    input_size = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size", ()))
    lines += ["", _library_usage(repo_id, library, task, has_dcls, input_size).rstrip(), ""]
    if facts:
        lines += ["## Conversion", "",
                  f"`dcls-zoo convert {name} CHECKPOINT OUT_DIR` loads the original checkpoint through the family's "
                  "`checkpoint_filter_fn`, writes this folder (`model.safetensors` stores each shared tensor, such "
                  "as a stage's DCLS positions, once; the ties are restored on load) and checks that the reloaded "
                  "model's logits equal those of the original-layout load on a fixed input.", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)


def write_cards(out_dir: Union[str, Path], names: Optional[list[str]] = None, prune: bool = False) -> list[Path]:
    """Write `<out_dir>/<name>/README.md` for every published model (or `names`); returns the paths.

    `prune` removes card folders of models that are no longer published (only folders holding just a README.md).
    """
    out_dir = Path(out_dir)
    names = names if names is not None else [f.name for f in published_models()]
    paths = []
    for name in names:
        path = out_dir / name / "README.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(model_card(name)), encoding="utf-8")
        paths.append(path)
    if prune and out_dir.is_dir():
        for stale in sorted(p for p in out_dir.iterdir() if p.is_dir() and p.name not in names):
            if [f.name for f in stale.iterdir()] == ["README.md"]:
                (stale / "README.md").unlink()
                stale.rmdir()
    return paths


def diff_cards(cards_dir: Union[str, Path]) -> list[str]:
    """Differences between the cards in `cards_dir` and a fresh generation (empty when up to date)."""
    cards_dir = Path(cards_dir)
    expected = {f.name for f in published_models()}
    present = {p.name for p in cards_dir.iterdir() if p.is_dir()} if cards_dir.is_dir() else set()
    problems = [f"missing card: {cards_dir / n / 'README.md'}" for n in sorted(expected - present)]
    problems += [f"card of an unpublished model: {cards_dir / n}" for n in sorted(present - expected)]
    for name in sorted(expected & present):
        path = cards_dir / name / "README.md"
        if not path.is_file() or path.read_text(encoding="utf-8") != str(model_card(name)):
            problems.append(f"out of date: {path}")
    if problems:
        problems.append("regenerate with: python scripts/make_cards.py")
    return problems
