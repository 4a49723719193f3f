"""The zoo's model table (`dcls_zoo.hub.model_table`): `dcls-zoo models`, the README's table generated from it,
and what `import dcls_zoo` registers."""
import subprocess
import sys
from pathlib import Path

import timm

from dcls_zoo.cli import main
from dcls_zoo.hub.model_table import README_BEGIN, format_model_table, model_table, readme_with_table, zoo_model_names

ROOT = Path(__file__).resolve().parents[1]


def test_every_zoo_model_has_a_pretrained_cfg_and_builds_on_meta():
    names = zoo_model_names()
    assert "dcls_convnext_tiny" in names
    for name in names:
        assert timm.models.get_pretrained_cfg(name) is not None, name
        timm.create_model(name, device="meta")


def test_readme_model_table_is_generated_from_the_registry():
    readme = (ROOT / "README.md").read_text()
    expected = readme_with_table(readme, format_model_table(model_table(), markdown=True))
    assert readme == expected, "README model table is stale: run `make readme` (dcls-zoo models --write-readme)"
    assert README_BEGIN in readme


def test_models_command_lists_counts(capsys):
    assert main(["models", "--filter", "dcls_convnext_t*"]) == 0
    out = capsys.readouterr().out
    assert "dcls_convnext_tiny" in out and "28,587,688" in out


def test_models_command_runs_a_forward_pass(capsys):
    assert main(["models", "--filter", "dcls_convnext_atto", "--forward"]) == 0
    assert "1x1000" in capsys.readouterr().out


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "dcls_zoo.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "models" in result.stdout


def test_import_registers_everything_without_network():
    # Sockets refuse to connect in the child; HF_HUB_OFFLINE is unset so a hidden download would show.
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n    raise RuntimeError('network access at import')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
        "import timm, transformers, dcls_zoo\n"
        "assert 'dcls_convnext_tiny' in timm.list_models('dcls_*')\n"
        "assert transformers.AutoConfig.for_model('ortho_gpt2').model_type == 'ortho_gpt2'\n"
        "timm.create_model('dcls_convnext_atto')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_OFFLINE"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
