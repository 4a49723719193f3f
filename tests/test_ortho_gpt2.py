"""ortho_gpt2: GPT-2 parity, Auto-class and remote-code round trips, GPT-2 and nanoGPT checkpoints, presets."""
import importlib
import inspect
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
)

import dcls_zoo.layers.activations.registry as activations_registry
from dcls_zoo.layers.activations import DEFAULT_DEGREES, FourierActivation, HermiteActivation
from dcls_zoo.lm import (
    ORTHO_GPT2_PRESETS,
    OrthoGPT2Config,
    OrthoGPT2ForSequenceClassification,
    OrthoGPT2LMHeadModel,
    OrthoGPT2Model,
    load_nanogpt_checkpoint,
)
from dcls_zoo.lm.configuration_ortho_gpt2 import ACTIVATION_DEFAULT_DEGREES

torchortho = importlib.import_module("torchortho")

TINY = dict(vocab_size=61, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def _ids(batch=2, length=9, vocab=61, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _perturb_activations(model, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mlp.act." in name:
                p.add_(scale * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------------------------------------------
# config and presets
# ---------------------------------------------------------------------------------------------------------------

def test_config_defaults_validation_and_auto_registration():
    config = OrthoGPT2Config(**TINY)
    assert (config.model_type, config.activation, config.activation_degree) == ("ortho_gpt2", "hermite", None)
    model = OrthoGPT2Model(config)
    assert model.h[0].mlp.act.degree == 3 and model.config.activation_degree == 3
    config = OrthoGPT2Config(activation="fourier", **TINY)
    model = OrthoGPT2Model(config)
    assert model.h[0].mlp.act.degree == 5 and model.config.activation_degree == 5
    assert {k: v for k, v in ACTIVATION_DEFAULT_DEGREES.items() if k != "gelu"} == DEFAULT_DEGREES
    for kwargs, message in [(dict(activation="relu"), "activation must be one of"),
                            (dict(activation_degree=0), "activation_degree must be an integer"),
                            (dict(activation_scheme="0.1.1"), "activation_scheme must be one of")]:
        with pytest.raises(ValueError, match=message):
            OrthoGPT2Config(**kwargs)
    with pytest.raises(ValueError, match="unknown OrthoGPT2 preset"):
        OrthoGPT2Config.from_preset("gpt2-124m-tropical5")
    assert type(AutoConfig.for_model("ortho_gpt2")) is OrthoGPT2Config
    assert type(AutoModel.from_config(config)) is OrthoGPT2Model
    assert type(AutoModelForCausalLM.from_config(config)) is OrthoGPT2LMHeadModel
    assert type(AutoModelForSequenceClassification.from_config(config)) is OrthoGPT2ForSequenceClassification


@pytest.mark.parametrize("model_cls", [OrthoGPT2Model, OrthoGPT2LMHeadModel, OrthoGPT2ForSequenceClassification])
def test_building_a_model_leaves_the_callers_config_unchanged(model_cls):
    config = OrthoGPT2Config(activation="fourier", **TINY)
    before = config.to_dict()
    model = model_cls(config)
    assert config.to_dict() == before and config.activation_degree is None
    # the model keeps the degree written out (saved explicitly), in one config shared with its GPT-2 body
    assert model.config.activation_degree == 5
    assert model.base_model.config is model.config
    resolved = OrthoGPT2Config(activation="fourier", activation_degree=5, **TINY)
    assert model_cls(resolved).config is resolved  # nothing to write out: the caller's object, as in transformers


@pytest.mark.parametrize("model_cls,parent", [(OrthoGPT2LMHeadModel, GPT2LMHeadModel),
                                              (OrthoGPT2ForSequenceClassification, GPT2ForSequenceClassification)])
def test_heads_run_their_gpt2_parent_constructor(monkeypatch, model_cls, parent):
    """So whatever a transformers release sets up in GPT2LMHeadModel / GPT2ForSequenceClassification is kept."""
    calls = []
    real = parent.__init__
    monkeypatch.setattr(parent, "__init__", lambda self, config: calls.append(config) or real(self, config))
    model = model_cls(OrthoGPT2Config(activation="hermite", num_labels=3, **TINY))
    assert calls == [model.config]
    assert type(model.transformer) is OrthoGPT2Model and type(model.transformer.h[0].mlp.act) is HermiteActivation
    if model_cls is OrthoGPT2LMHeadModel:
        assert model.lm_head.weight is model.transformer.wte.weight
    else:
        assert model.num_labels == 3 and model.score.out_features == 3


@pytest.mark.parametrize("preset,act_cls,degree", [("gpt2-124m-hermite3", HermiteActivation, 3),
                                                   ("gpt2-124m-fourier5", FourierActivation, 5)])
def test_124m_presets_on_meta(preset, act_cls, degree):
    config = OrthoGPT2Config.from_preset(preset)
    assert preset in ORTHO_GPT2_PRESETS
    with torch.device("meta"):
        model = OrthoGPT2LMHeadModel(config)
    acts = [block.mlp.act for block in model.transformer.h]
    assert len(acts) == 12 and all(type(a) is act_cls and a.degree == degree for a in acts)
    d, v, t, layers = 768, 50304, 1024, 12
    # GPT-2 124M with the padded vocabulary, lm_head tied to wte (counted once)
    per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    expected = v * d + t * d + layers * per_layer + 2 * d
    act_params = sum(p.numel() for a in acts for p in a.parameters())
    assert act_params == 12 * ((degree + 1) if act_cls is HermiteActivation else 1 + 3 * degree)
    assert sum(p.numel() for p in model.parameters()) == expected + act_params
    assert model.lm_head.weight is model.transformer.wte.weight


# ---------------------------------------------------------------------------------------------------------------
# parity with transformers' GPT-2 and torchortho
# ---------------------------------------------------------------------------------------------------------------

def test_gelu_variant_is_gpt2():
    ours = OrthoGPT2LMHeadModel(OrthoGPT2Config(activation="gelu", **TINY)).eval()
    gpt2 = GPT2LMHeadModel(GPT2Config(**TINY)).eval()
    gpt2.load_state_dict(ours.state_dict())
    ids = _ids()
    torch.testing.assert_close(ours(ids).logits, gpt2(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("activation,ref_cls,degree", [("hermite", torchortho.HermiteActivation, 3),
                                                       ("fourier", torchortho.FourierActivation, 5),
                                                       ("tropical", torchortho.TropicalActivation, 5)])
def test_parity_with_gpt2_and_torchortho_activation(activation, ref_cls, degree):
    torch.manual_seed(0)
    ours = OrthoGPT2LMHeadModel(OrthoGPT2Config(activation=activation, **TINY))
    _perturb_activations(ours)
    reference = GPT2LMHeadModel(GPT2Config(**TINY))
    for block in reference.transformer.h:
        block.mlp.act = ref_cls(degree)
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(k.rsplit(".", 1)[1] in ("coeffs", "grid", "powers", "normalization_term")
                                  for k in missing)
    ids = _ids()
    y_ours, y_ref = ours(ids, labels=ids), reference(ids, labels=ids)
    torch.testing.assert_close(y_ours.logits, y_ref.logits, rtol=1e-5, atol=1e-5)
    y_ours.loss.backward()
    y_ref.loss.backward()
    ref_params = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_model_keeps_dtype():
    model = OrthoGPT2LMHeadModel(OrthoGPT2Config(activation="fourier", **TINY)).to(torch.bfloat16)
    assert model(_ids()).logits.dtype == torch.bfloat16
    assert model.transformer.h[0].mlp.act(torch.randn(3, dtype=torch.bfloat16)).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------------------------

def test_save_load_generate_round_trip(tmp_path):
    torch.manual_seed(0)
    model = OrthoGPT2LMHeadModel(OrthoGPT2Config(activation="hermite", **TINY)).eval()
    _perturb_activations(model)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    # the activations' package travels with the remote code: its registry as ortho_activations.py, and its modules
    assert {"config.json", "model.safetensors", "configuration_ortho_gpt2.py", "modeling_ortho_gpt2.py",
            "ortho_activations.py", "modules.py", "eager.py", "kernels.py", "fitting.py"} <= files
    assert (tmp_path / "ortho_activations.py").read_text() == inspect.getsource(activations_registry)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "ortho_gpt2" and config["activation"] == "hermite"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM",
                                       "AutoModelForSequenceClassification"}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is OrthoGPT2LMHeadModel
    ids = _ids()
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    loaded_act, act = loaded.transformer.h[1].mlp.act, model.transformer.h[1].mlp.act
    torch.testing.assert_close(loaded_act.coefficients, act.coefficients, rtol=0, atol=0)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    generated = loaded.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                pad_token_id=0)
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                              pad_token_id=0)
    assert torch.equal(generated, expected) and generated.shape == (2, 14)
    assert type(AutoModel.from_pretrained(tmp_path)) is OrthoGPT2Model
    classifier, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3,
                                                                          output_loading_info=True)
    assert type(classifier) is OrthoGPT2ForSequenceClassification and info["missing_keys"] == {"score.weight"}


def test_gpt2_checkpoint_loads_with_only_activation_parameters_new(tmp_path):
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(**TINY))
    gpt2.save_pretrained(tmp_path)
    model, info = OrthoGPT2LMHeadModel.from_pretrained(tmp_path, activation="fourier", output_loading_info=True)
    assert info["missing_keys"] == {f"transformer.h.{i}.mlp.act.{n}" for i in range(2)
                                    for n in ("fundamental", "phases", "coefficients", "grid")}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    gpt2_state = gpt2.state_dict()
    for name, value in model.state_dict().items():
        if ".mlp.act." not in name:
            torch.testing.assert_close(value, gpt2_state[name], rtol=0, atol=0, msg=name)
    fresh = FourierActivation(5)  # the new coefficients get the variance-preserving init, not garbage
    for name, value in model.transformer.h[1].mlp.act.named_parameters():
        torch.testing.assert_close(value, getattr(fresh, name), rtol=0, atol=0)


@pytest.mark.parametrize("dcls_zoo_importable", [False, True], ids=["without-dcls_zoo", "with-dcls_zoo"])
def test_remote_code_loads(tmp_path, dcls_zoo_importable):
    """A saved folder loads with trust_remote_code=True where dcls_zoo cannot be imported (the folder holds the
    activations' code), and where it can (transformers then takes the classes dcls_zoo registered)."""
    torch.manual_seed(0)
    folder = tmp_path / "saved"
    model = OrthoGPT2LMHeadModel(OrthoGPT2Config(activation="fourier", **TINY)).eval()
    _perturb_activations(model)
    model.save_pretrained(folder)
    ids = _ids()
    torch.save({"ids": ids, "logits": model(ids).logits.detach(),
                "generated": model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                            do_sample=False, pad_token_id=0)}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import importlib.abc, importlib.util, sys

        class BlockDclsZoo(importlib.abc.MetaPathFinder):
            # dcls_zoo may be installed (pip install -e .): make it unimportable for this process
            def find_spec(self, name, path=None, target=None):
                if name == "dcls_zoo" or name.startswith("dcls_zoo."):
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
                return None

        importable = {dcls_zoo_importable!r}
        if importable:
            sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
            import dcls_zoo.lm  # registers the Auto classes
        else:
            sys.meta_path.insert(0, BlockDclsZoo())
            try:
                import dcls_zoo
            except ModuleNotFoundError:
                pass
            else:
                raise SystemExit("dcls_zoo is importable")

        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

        folder = {str(folder)!r}
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        if importable:
            local = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False)
            assert type(local) is dcls_zoo.lm.OrthoGPT2LMHeadModel, type(local)
        else:
            try:
                AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False)
            except ValueError as error:
                assert "trust_remote_code" in str(error)
            else:
                raise SystemExit("loaded custom code without trust_remote_code")
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        # the folder's code; where dcls_zoo registered its classes, those (transformers prefers registered code)
        assert type(model).__module__.startswith("dcls_zoo.lm" if importable else "transformers_modules"), type(model)
        assert type(model.transformer.h[0].mlp.act).__name__ == "FourierActivation"
        ids = expected["ids"]
        torch.testing.assert_close(model(ids).logits, expected["logits"], rtol=0, atol=0)
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                   pad_token_id=0)
        assert torch.equal(generated, expected["generated"])
        assert model.activation_parameter_names() == {{f"transformer.h.{{i}}.mlp.act.{{n}}" for i in range(2)
                                                      for n in ("fundamental", "phases", "coefficients", "grid")}}
        assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__ == "OrthoGPT2Model"
        classifier = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True, num_labels=2)
        assert type(classifier).__name__ == "OrthoGPT2ForSequenceClassification"
        if not importable:
            assert not any(name == "dcls_zoo" or name.startswith("dcls_zoo.") for name in sys.modules)
        print("REMOTE-OK")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    env["HF_HUB_OFFLINE"] = "1"
    # -I: no PYTHONPATH, no user site, no script/cwd directory on sys.path; cwd is a folder without dcls_zoo
    result = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and "REMOTE-OK" in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]


# ---------------------------------------------------------------------------------------------------------------
# nanoGPT-layout checkpoints (the authors' pytorch-language-models GPT / GPTHermite / GPTFourier)
# ---------------------------------------------------------------------------------------------------------------

class _NanoBlock(nn.Module):
    """nanoGPT's block written from its description: Linear layers (out, in), optional biases, exact GELU."""

    def __init__(self, d, n_head, bias, act):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(d, bias=bias)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.attn.c_proj = nn.Linear(d, d, bias=bias)
        self.ln_2 = nn.LayerNorm(d, bias=bias)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(d, 4 * d, bias=bias)
        self.mlp.act = act
        self.mlp.c_proj = nn.Linear(4 * d, d, bias=bias)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.attn.c_proj(y)
        return x + self.mlp.c_proj(self.mlp.act(self.mlp.c_fc(self.ln_2(x))))


class _NanoGPT(nn.Module):
    def __init__(self, vocab, block_size, d, n_layer, n_head, bias, make_act):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, d), wpe=nn.Embedding(block_size, d),
            h=nn.ModuleList([_NanoBlock(d, n_head, bias, make_act()) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(d, bias=bias)))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        for block in self.transformer.h:  # the non-flash path's causal mask, as a (1, 1, T, T) buffer
            block.attn.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size,
                                                                                                     block_size))

    def forward(self, idx):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


@pytest.mark.parametrize("make_act,activation,bias", [
    (lambda: torchortho.HermiteActivation(3), "hermite", False),
    (lambda: torchortho.FourierActivation(5), "fourier", False),
    (lambda: nn.GELU(), "gelu", True),
])
def test_nanogpt_checkpoint_converts(tmp_path, make_act, activation, bias):
    torch.manual_seed(0)
    nano = _NanoGPT(61, 32, 16, 2, 2, bias, make_act).eval()
    with torch.no_grad():
        for p in nano.parameters():
            p.add_(0.02 * torch.randn_like(p))
    # torch.compile'd nanoGPT saves keys under _orig_mod.; ckpt.pt holds model_args next to the weights
    state = {f"_orig_mod.{k}": v for k, v in nano.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"model": state, "model_args": dict(n_layer=2, n_head=2, n_embd=16, block_size=32, bias=bias,
                                                   vocab_size=61, dropout=0.0), "iter_num": 10}, path)
    model = load_nanogpt_checkpoint(str(path))
    assert model.config.activation == activation
    assert model.config.activation_degree == {"hermite": 3, "fourier": 5, "gelu": None}[activation]
    ids = _ids(length=11)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, nano(ids), rtol=1e-5, atol=1e-5)
    # the converted model saves and reloads as a regular ortho_gpt2 folder
    model.save_pretrained(tmp_path / "hf")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_nanogpt_legacy_hermite_and_errors(tmp_path):
    def legacy_hermite():
        act = torchortho.HermiteActivation(3)
        act.coeffs.mul_(torch.arange(1.0, 5.0).lgamma().exp().sqrt().unsqueeze(1))  # 0.1.1 basis He_k/sqrt(k!)
        return act

    torch.manual_seed(1)
    nano = _NanoGPT(61, 32, 16, 2, 2, False, legacy_hermite).eval()
    model = load_nanogpt_checkpoint({"model": nano.state_dict(), "model_args": {"n_head": 2}})
    assert model.config.activation_scheme == "legacy"
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, nano(ids), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="n_head cannot be read"):
        load_nanogpt_checkpoint(nano.state_dict())
    with pytest.raises(ValueError, match="not a nanoGPT GPT state dict"):
        load_nanogpt_checkpoint({"weight": torch.zeros(1)}, n_head=2)
    bare = {k: v for k, v in nano.state_dict().items() if not k.endswith((".coeffs", ".grid"))}
    with pytest.raises(ValueError, match="cannot tell the activation"):
        load_nanogpt_checkpoint(bare, n_head=2)
    assert load_nanogpt_checkpoint(bare, n_head=2, activation="hermite", activation_degree=3,
                                   activation_scheme="legacy").config.activation == "hermite"


@pytest.fixture(scope="module")
def torchortho_0_1_1():
    """torchortho 0.1.1 (the legacy scheme's origin), fetched before pytest and imported on the side."""
    import importlib

    from third_party_paths import require_third_party

    root = str(require_third_party("torchortho-0.1.1"))   # not fetched: fails the test, naming the fetch command
    installed = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "torchortho"}
    sys.path.insert(0, root)
    try:
        legacy = importlib.import_module("torchortho")
        assert legacy.__file__.startswith(root)
    finally:
        sys.path.remove(root)
        for k in [k for k in sys.modules if k.split(".")[0] == "torchortho"]:
            del sys.modules[k]
        sys.modules.update(installed)
    return legacy


def _legacy_numba_hermite(torchortho_0_1_1, seed):
    # use_numba=True adds 0.1.1's `normalization_term` (sqrt(k!)) next to `coeffs`; on CPU it runs the torch path
    act = torchortho_0_1_1.HermiteActivation(3, use_numba=True)
    with torch.no_grad():
        act.coefficients.add_(0.1 * torch.randn(act.coefficients.shape, generator=torch.Generator().manual_seed(seed)))
    return act


def test_legacy_hermite_state_dict_with_normalization_term_loads_as_legacy(torchortho_0_1_1):
    ref = _legacy_numba_hermite(torchortho_0_1_1, seed=0)
    assert {"normalization_term", "coeffs", "grid"} <= set(ref.state_dict())
    ours = HermiteActivation(3, scheme="legacy")
    ours.load_state_dict(ref.state_dict())   # all buffers together say 'legacy'
    x = torch.linspace(-3, 3, 101)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="checkpoint uses the 'legacy' Hermite basis .* build it with scheme='legacy'"):
        HermiteActivation(3).load_state_dict(ref.state_dict())
    # and a 0.1.2 numba-path state dict (normalization_term = k!) still loads as the default scheme
    HermiteActivation(3).load_state_dict(torchortho.HermiteActivation(3, use_numba=True).state_dict())


def test_nanogpt_activation_argument_keeps_scheme_detection(torchortho_0_1_1):
    torch.manual_seed(2)
    nano = _NanoGPT(61, 32, 16, 2, 2, False, lambda: _legacy_numba_hermite(torchortho_0_1_1, seed=3)).eval()
    checkpoint = {"model": nano.state_dict(), "model_args": {"n_head": 2}}
    for kwargs in ({}, {"activation": "hermite"}, {"activation": "hermite", "activation_scheme": "legacy"}):
        model = load_nanogpt_checkpoint(checkpoint, **kwargs)
        assert (model.config.activation, model.config.activation_degree, model.config.activation_scheme) == (
            "hermite", 3, "legacy"), kwargs
        with torch.no_grad():
            torch.testing.assert_close(model(_ids()).logits, nano(_ids()), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="activation_scheme='default', but the checkpoint's torchortho buffers are "
                                         "the 'legacy' scheme's"):
        load_nanogpt_checkpoint(checkpoint, activation="hermite", activation_scheme="default")


def test_activation_parameters_for_optimizer_groups():
    model = OrthoGPT2LMHeadModel(OrthoGPT2Config(activation="hermite", **TINY))
    names = model.activation_parameter_names()
    assert names == {f"transformer.h.{i}.mlp.act.coefficients" for i in range(2)}
    assert all(model.get_parameter(n).ndim == 1 for n in names)
    assert math.isclose(model.transformer.h[0].mlp.act.coefficients[1].item(), math.exp(-0.5), rel_tol=1e-6)
