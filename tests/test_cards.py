"""Model cards: the committed hub_cards/ equal a fresh generation, and every card's metadata is what the Hub expects."""
import dataclasses
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import timm
from huggingface_hub import ModelCard, ModelCardData
from timm.models import get_pretrained_cfg

from dcls_zoo.hub.cards import (
    FACTS,
    CardFacts,
    ModelFacts,
    diff_cards,
    hub_id,
    model_card,
    model_facts,
    published_models,
    write_cards,
)

CARDS = Path(__file__).resolve().parents[1] / "hub_cards"
PUBLISHED = [f.name for f in published_models()]
FACTS_BY_NAME = {f.name: f for f in published_models()}
# Hub task ids and licence ids the zoo's cards may use (from the Hub's task and licence lists).
PIPELINE_TAGS = {"image-classification", "audio-classification", "text-generation", "text-classification"}
LICENSES = {"mit", "apache-2.0", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "gpl-3.0", "other"}


def test_committed_cards_equal_a_fresh_generation():
    assert diff_cards(CARDS) == []


def test_write_cards_prunes_stale_folders_and_regenerates_identically(tmp_path):
    (tmp_path / "gone_model.old").mkdir()
    (tmp_path / "gone_model.old" / "README.md").write_text("stale")
    write_cards(tmp_path, prune=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PUBLISHED)
    assert diff_cards(tmp_path) == []
    (tmp_path / PUBLISHED[0] / "README.md").write_text("edited by hand")
    assert diff_cards(tmp_path)[0].startswith("out of date:")


def test_every_facts_row_names_a_registered_model():
    # a family renaming a tag would otherwise drop its card silently
    assert PUBLISHED == [f.name for f in FACTS]
    assert len(PUBLISHED) == len(set(PUBLISHED))


@pytest.mark.parametrize("name", PUBLISHED)
def test_card_metadata_round_trips_and_has_the_hub_fields(name):
    facts = FACTS_BY_NAME[name]
    card = ModelCard.load(CARDS / name / "README.md")
    data = card.data.to_dict()
    assert ModelCard(str(card)).data.to_dict() == data
    assert ModelCardData(**data).to_dict() == data
    assert data["library_name"] == facts.library
    assert data["pipeline_tag"] in PIPELINE_TAGS and data["pipeline_tag"] == facts.task
    assert {facts.library, "dcls-zoo"} <= set(data["tags"])
    assert data["datasets"] == [facts.dataset]
    assert data["metrics"] == [facts.metric]
    assert data["license"] in LICENSES
    if data["license"] == "other":
        assert data["license_name"] and data["license_link"].startswith("https://")
    assert data.get("base_model") == facts.base_model
    if facts.metric_value is None:
        assert card.data.eval_results is None
    else:
        (result,) = card.data.eval_results
        assert (result.metric_type, result.metric_value, result.dataset_type) == (
            facts.metric, facts.metric_value, facts.dataset)


@pytest.mark.parametrize("name", PUBLISHED)
def test_card_text_has_the_facts_and_usage(name):
    facts = FACTS_BY_NAME[name]
    text = (CARDS / name / "README.md").read_text()
    for needle in (f"arXiv:{facts.arxiv}", facts.original_repo, facts.checkpoint_url, "import dcls_zoo",
                   f'"hf-hub:{hub_id(name)}"', "## How to fine-tune", "Input size:** (", "Parameters:** "):
        assert needle in text, needle


@pytest.mark.parametrize("name", PUBLISHED)
def test_card_facts_come_from_the_registered_pretrained_cfg(name):
    # One home per fact: checkpoint, code, papers and licence are read from the family's cfg, never typed again in
    # the cards table.
    cfg = asdict(get_pretrained_cfg(name))
    facts = FACTS_BY_NAME[name]
    assert facts.checkpoint_url == cfg["url"] and facts.original_repo == cfg["origin_url"]
    assert facts.license == cfg["license"] and facts.paper == cfg["paper_name"]
    paper_ids = (cfg["paper_ids"],) if isinstance(cfg["paper_ids"], str) else tuple(cfg["paper_ids"])
    assert tuple(f"arXiv:{i}" for i in (facts.arxiv, *facts.extra_arxiv)) == paper_ids
    assert timm.is_model(name.partition(".")[0])
    assert cfg["hf_hub_id"] in (None, hub_id(name))   # once added, the Hub id follows the one scheme


def test_the_cards_table_holds_no_field_a_pretrained_cfg_holds():
    cfg_fields = set(asdict(get_pretrained_cfg(PUBLISHED[0])))
    assert not cfg_fields & set(CardFacts.__dataclass_fields__)
    assert set(ModelFacts.__dataclass_fields__) > set(CardFacts.__dataclass_fields__)


@pytest.mark.parametrize("name", [f.name for f in FACTS if f.metric_value is not None])
def test_a_reported_metric_agrees_with_the_cfg_notes(name):
    # the family cfg's free-text notes repeat the authors' number; the two must not drift apart
    facts, notes = model_facts(name), " ".join(get_pretrained_cfg(name).notes or ())
    assert re.search(rf"(?<![\d.])({facts.metric_value:.2f}|{facts.metric_value:g})(?![\d])", notes), notes
    if facts.metric_spread is not None:
        assert f"+- {facts.metric_spread:.2f}" in notes, notes


def test_a_published_cfg_without_a_card_field_is_an_error(monkeypatch):
    from timm.models import get_pretrained_cfg as registered_cfg

    without = dataclasses.replace(registered_cfg(PUBLISHED[0]), origin_url=None)
    monkeypatch.setattr("timm.models.get_pretrained_cfg", lambda name, **kw: without)
    with pytest.raises(ValueError, match=rf"the pretrained cfg of {re.escape(PUBLISHED[0])} has no origin_url"):
        model_facts(PUBLISHED[0])


def test_parameter_counts_in_cards_match_the_originals():
    # dcls.md §3.3: unique parameters of the original ConvNeXt-dcls models (shared positions counted once)
    expected = {"dcls_convnext_tiny.bilinear_in1k": "28,587,688", "dcls_convnext_small.bilinear_in1k": "50,217,064",
                "dcls_convnext_base.bilinear_in1k": "88,582,632", "dcls_gauss_convnext_tiny.gauss_in1k": "28,586,536"}
    for name, count in expected.items():
        assert f"**Parameters:** {count} " in (CARDS / name / "README.md").read_text(), name


def test_card_for_an_unlisted_model_is_minimal_but_valid():
    card = model_card("dcls_convnext_atto")
    data = card.data.to_dict()
    assert data["library_name"] == "timm" and "dcls" in data["tags"]
    assert ModelCard(str(card)).data.to_dict() == data
    assert "import dcls_zoo" in str(card) and "Reported results" not in str(card)


def test_the_usage_and_fine_tuning_code_in_a_card_runs(tmp_path):
    # Run the card's Python blocks with the Hub id replaced by a local folder holding the same files.
    import re

    from PIL import Image

    from dcls_zoo.hub import save_folder

    folder = save_folder(timm.create_model("dcls_convnext_atto"), tmp_path / "atto")
    text = str(model_card("dcls_convnext_atto"))
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    for code in blocks:
        code = code.replace('"hf-hub:dcls-zoo/dcls_convnext_atto"', repr(f"local-dir:{folder}"))
        code = code.replace('"dcls-zoo/dcls_convnext_atto"', repr(str(folder)))
        namespace = {"image": Image.new("RGB", (80, 64))}
        exec(compile(code, "card", "exec"), namespace)
    assert namespace["model"].num_classes == 10 and "optimizer" in namespace
