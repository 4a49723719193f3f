"""Pushing to the Hub: a real `dcls-zoo push` into a local Hub-protocol server, then loading back by Hub id from an
empty cache (timm and transformers), and the refusals (pickles, no card, unknown architecture, offline, no token).

The server runs in this process on 127.0.0.1. The DCLS-ConvNeXt is pushed by `python -m dcls_zoo.cli push` (the
`dcls-zoo` console command) in its own process, and everything is pulled back in another, fresh process; both see
only environment settings (HF_ENDPOINT at the test server, a fresh empty HF cache), as a user's shell would. Further
pushes call the same command in this process with huggingface_hub's constants pointed at the server.
"""
import contextlib
import json
import re
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from hub_server import HubServer
from safetensors.torch import load_file

from dcls_zoo.cli import main as cli_main
from dcls_zoo.hub import check_folder, push_folder, save_folder
from dcls_zoo.hub.push import publish_all

ROOT = Path(__file__).resolve().parents[1]
ORG = "dcls-zoo-test"
GPT2_MODEL_TYPE = "ortho_gpt2"   # the GPT-2 variants of dcls_zoo.lm (issue 4)


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        yield server


def _env(hub, hf_home):
    env = dict(os.environ)
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN="test-token", HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1",
               HF_HOME=str(hf_home), HF_HUB_CACHE=str(Path(hf_home) / "hub"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _run(args, env, timeout=240):
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@contextlib.contextmanager
def _pointed_at(hub, hf_home):
    """This process's huggingface_hub aimed at the test server (what HF_ENDPOINT does for a fresh process)."""
    from huggingface_hub import constants

    saved = {k: getattr(constants, k) for k in ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_OFFLINE",
                                                "HF_HUB_DISABLE_XET", "HF_HUB_CACHE")}
    old_token = os.environ.get("HF_TOKEN")
    constants.ENDPOINT = hub.url
    constants.HUGGINGFACE_CO_URL_TEMPLATE = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET = False, True
    constants.HF_HUB_CACHE = str(hf_home)
    os.environ["HF_TOKEN"] = "test-token"
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(constants, k, v)
        if old_token is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = old_token


def _tiny_gpt2_variant():
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM

    assert GPT2_MODEL_TYPE in CONFIG_MAPPING, "`import dcls_zoo` (conftest) registers dcls_zoo.lm's ortho_gpt2"
    config = AutoConfig.for_model(GPT2_MODEL_TYPE, vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


# One process pulls everything back by Hub id, from an empty cache, knowing only HF_ENDPOINT.
_PULL = r"""
import os, sys, torch, timm, dcls_zoo
from safetensors.torch import save_file
from huggingface_hub import constants
from dcls_zoo.hub import load_folder
out, inputs, timm_id, lm_id = sys.argv[1:5]
assert not os.path.isdir(constants.HF_HUB_CACHE) or not os.listdir(constants.HF_HUB_CACHE), 'cache not empty'
x = torch.load(inputs)
result = {}
with torch.no_grad():
    a = timm.create_model('hf-hub:' + timm_id, pretrained=True).eval()
    b = load_folder(timm_id).eval()
    result.update(timm=a(x['image']), zoo=b(x['image']),
                  distinct_P=torch.tensor(len({id(m.P) for m in a.modules() if type(m).__name__ == 'Dcls2d'})))
    from transformers import AutoModelForCausalLM
    lm = AutoModelForCausalLM.from_pretrained(lm_id).eval()
    result['logits'] = lm(x['tokens']).logits.contiguous()
save_file(result, out)
"""

TIMM_REPO = f"{ORG}/dcls_convnext_atto.push_test"
LM_REPO = f"{ORG}/ortho_gpt2_tiny.push_test"


@pytest.fixture(scope="module")
def round_trip(hub, tmp_path_factory):
    """Push a DCLS-ConvNeXt (by the `dcls-zoo push` command, in its own process) and a GPT-2 variant (by the same
    command in this process); then pull both back in a fresh process."""
    tmp = tmp_path_factory.mktemp("round_trip")
    torch.manual_seed(0)
    convnext = timm.create_model("dcls_convnext_atto", num_classes=7).eval()
    convnext_folder = save_folder(convnext, tmp / "dcls_convnext_atto.push_test")
    push_out = _run([sys.executable, "-m", "dcls_zoo.cli", "push", str(convnext_folder), "--repo-id", TIMM_REPO],
                    _env(hub, tmp / "push_home"))
    lm = _tiny_gpt2_variant()
    lm_folder = save_folder(lm, tmp / "gpt2_variant", model_name="ortho_gpt2_tiny.push_test")
    with _pointed_at(hub, tmp / "push_cache"):
        assert cli_main(["push", str(lm_folder), "--repo-id", LM_REPO]) == 0
    inputs = {"image": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
              "tokens": torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))}
    torch.save(inputs, tmp / "inputs.pt")
    (tmp / "pull_home").mkdir()
    _run([sys.executable, "-c", _PULL, str(tmp / "out.safetensors"), str(tmp / "inputs.pt"), TIMM_REPO, LM_REPO],
         _env(hub, tmp / "pull_home"))
    return dict(convnext=convnext, convnext_folder=convnext_folder, lm=lm, inputs=inputs, push_out=push_out,
                pulled=load_file(tmp / "out.safetensors"))


def test_dcls_zoo_push_creates_the_repo_and_sends_safetensors_only(hub, round_trip):
    assert "sent 4 files" in round_trip["push_out"]
    files = hub.files(TIMM_REPO)
    assert sorted(files) == ["README.md", "config.json", "model.safetensors", "model.safetensors.sha256"]
    assert files["model.safetensors"] == (round_trip["convnext_folder"] / "model.safetensors").read_bytes()
    assert "model.safetensors" in hub.repos[TIMM_REPO].lfs_paths     # large binaries go through LFS
    assert ("POST", "/api/repos/create") in hub.requests


def test_dcls_convnext_pulled_by_hub_id_gives_identical_outputs(round_trip):
    pulled = round_trip["pulled"]
    with torch.no_grad():
        ref = round_trip["convnext"](round_trip["inputs"]["image"])
    assert torch.equal(pulled["timm"], ref) and torch.equal(pulled["zoo"], ref)
    assert pulled["distinct_P"].item() == 4       # one shared P per stage after the Hub round trip


def test_gpt2_variant_pulled_by_hub_id_gives_identical_outputs(hub, round_trip):
    assert json.loads(hub.files(LM_REPO)["config.json"])["model_type"] == GPT2_MODEL_TYPE
    assert not [p for p in hub.files(LM_REPO) if p.endswith((".bin", ".pt", ".pth", ".pkl"))]
    with torch.no_grad():
        assert torch.equal(round_trip["pulled"]["logits"], round_trip["lm"](round_trip["inputs"]["tokens"]).logits)


def test_save_pretrained_push_to_hub_uploads_the_complete_remote_code(hub, tmp_path):
    """transformers' `save_pretrained(..., push_to_hub=True)` uploads inside the call: the activations' code that
    makes the folder load without dcls_zoo is in the upload, byte for byte what is saved locally."""
    from dcls_zoo.lm import OrthoGPT2LMHeadModel

    model = _tiny_gpt2_variant()
    assert OrthoGPT2LMHeadModel._auto_class == "AutoModelForCausalLM"  # registered by `import dcls_zoo`
    with _pointed_at(hub, tmp_path / "cache"):
        model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id=f"{ORG}/remote_code_push")
    local = {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir() if p.suffix == ".py"}
    assert {"ortho_activations.py", "modules.py", "modeling_ortho_gpt2.py"} <= set(local)
    sent = hub.files(f"{ORG}/remote_code_push")
    assert {name: sent.get(name) for name in local} == local


def test_pushing_to_an_existing_repo_adds_a_commit(hub, round_trip, tmp_path):
    commits = len(hub.repos[TIMM_REPO].commits)
    folder = save_folder(timm.create_model("dcls_convnext_atto", num_classes=7), tmp_path / "again")
    with _pointed_at(hub, tmp_path / "cache"):
        assert cli_main(["push", str(folder), "--repo-id", TIMM_REPO, "--commit-message", "retrained"]) == 0
    assert len(hub.repos[TIMM_REPO].commits) == commits + 1
    assert hub.files(TIMM_REPO)["model.safetensors"] == (folder / "model.safetensors").read_bytes()


# -- refusals (no network is touched: the folder checks come first) ------------------------------------------------

@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    return save_folder(timm.create_model("dcls_convnext_atto", num_classes=3),
                       tmp_path_factory.mktemp("push") / "good")


def _copy(folder, tmp_path):
    return Path(shutil.copytree(folder, tmp_path / "candidate"))


def test_dry_run_lists_what_would_be_sent(good_folder, capsys):
    assert cli_main(["push", str(good_folder), "--repo-id", f"{ORG}/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would send 4 files" in out
    for name in ("README.md", "config.json", "model.safetensors", "model.safetensors.sha256"):
        assert name in out


@pytest.mark.parametrize("name, content", [
    ("pytorch_model.bin", None),                    # by suffix
    ("weights.pth.tar", None),
    ("extra/state.ckpt", None),
    ("innocent.dat", b"\x80\x04\x95"),              # a pickle stream under another name
])
def test_a_folder_with_a_pickle_is_refused(good_folder, tmp_path, capsys, name, content):
    folder = _copy(good_folder, tmp_path)
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        torch.save({"w": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"refusing to push .*pickled files \({re.escape(name)}[:)]"):
        check_folder(folder)
    assert cli_main(["push", str(folder), "--repo-id", f"{ORG}/x", "--dry-run"]) == 1
    assert "pickled files" in capsys.readouterr().err


def test_a_refused_folder_sends_nothing_to_the_hub(good_folder, tmp_path, hub):
    folder = _copy(good_folder, tmp_path)
    (tmp_path / "secret").write_text("hf_token\n")
    (folder / "notes.txt").symlink_to(tmp_path / "secret")
    before = len(hub.requests)
    with _pointed_at(hub, tmp_path / "cache"):
        assert cli_main(["push", str(folder), "--repo-id", f"{ORG}/refused"]) == 1
    assert len(hub.requests) == before and f"{ORG}/refused" not in hub.repos


def test_a_folder_without_a_card_is_refused(good_folder, tmp_path):
    folder = _copy(good_folder, tmp_path)
    (folder / "README.md").unlink()
    with pytest.raises(ValueError, match=r"has no model card \(README.md\)"):
        push_folder(folder, f"{ORG}/x", dry_run=True)


def test_a_config_of_an_unknown_architecture_is_refused(good_folder, tmp_path):
    folder = _copy(good_folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "no_such_convnext"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"architecture 'no_such_convnext' is not a registered timm model"):
        push_folder(folder, f"{ORG}/x", dry_run=True)
    config.pop("architecture")
    config["model_type"] = "no_such_gpt"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model_type 'no_such_gpt' is not registered"):
        push_folder(folder, f"{ORG}/x", dry_run=True)


def test_publish_all_checks_every_folder_first_and_skips_unpublished_ones(good_folder, tmp_path, hub):
    root = tmp_path / "converted"
    shutil.copytree(good_folder, root / "dcls_convnext_atto.a")
    shutil.copytree(good_folder, root / "dcls_convnext_atto.b")
    (root / "not_published.x").mkdir()
    plans, skipped = publish_all(root, org="acme", dry_run=True,
                                 published={"dcls_convnext_atto.a", "dcls_convnext_atto.b"})
    assert [p.repo_id for p in plans] == ["acme/dcls_convnext_atto.a", "acme/dcls_convnext_atto.b"]
    assert skipped == ["not_published.x"]
    torch.save({}, root / "dcls_convnext_atto.b" / "optimizer.pt")
    with _pointed_at(hub, tmp_path / "cache"), pytest.raises(ValueError, match=r"pickled files \(optimizer\.pt\)"):
        publish_all(root, org="acme", published={"dcls_convnext_atto.a", "dcls_convnext_atto.b"})
    assert "acme/dcls_convnext_atto.a" not in hub.repos     # nothing was sent before the bad folder was found


def test_a_bad_repo_id_is_refused(good_folder):
    with pytest.raises(ValueError, match=r"repo_id must be 'org/name'"):
        push_folder(good_folder, "just-a-name", dry_run=True)


def test_offline_no_token_or_no_network_fail_at_once_saying_which(good_folder, monkeypatch, tmp_path):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE     # conftest's setting
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set"):
        push_folder(good_folder, f"{ORG}/x")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_tokens"))
    with pytest.raises(RuntimeError, match="no Hugging Face token"):
        push_folder(good_folder, f"{ORG}/x")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"no connection to the Hub at http://127\.0\.0\.1:9"):
        push_folder(good_folder, f"{ORG}/x", token="t", endpoint="http://127.0.0.1:9")   # nothing listens there
    assert time.monotonic() - start < 10
