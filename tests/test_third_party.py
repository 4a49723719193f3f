"""The third-party test code the suite runs is there, fetched for the installed versions (before pytest, by
`scripts/fetch_third_party_tests.py`); a missing or stale copy fails here instead of silently running less."""
import importlib.metadata
import os
import shutil
import subprocess
import sys

import pytest
from third_party_paths import FETCH_COMMAND, THIRD_PARTY, TIMM_TESTS, TRANSFORMERS_TESTS, WHEELS, require_third_party


@pytest.mark.parametrize("name", [TIMM_TESTS, TRANSFORMERS_TESTS, *WHEELS])
def test_third_party_test_code_is_fetched_for_what_is_installed(name):
    assert require_third_party(name).is_dir()


def test_timm_tests_are_wired_to_the_zoo_models():
    folder = require_third_party(TIMM_TESTS)
    source = (folder / "test_models.py").read_text()
    assert "FEAT_INTER_FILTERS = [*_DCLS_ZOO_MODULES," in source
    assert (folder / "VERSION").read_text().strip() == importlib.metadata.version("timm")


def test_a_stale_copy_fails_naming_the_fetch_command(monkeypatch):
    monkeypatch.setattr("third_party_paths.expected_version", lambda folder: "0.0.0")
    with pytest.raises(pytest.fail.Exception, match=r"fetched for .*the tests need 0\.0\.0: run "
                                                    r"`python3 scripts/fetch_third_party_tests\.py`"):
        require_third_party(TRANSFORMERS_TESTS)


def _fetcher_copy(tmp_path, third_party=True):
    """The fetcher in a copy of the repository's layout under tmp_path, run with no package index reachable."""
    root = THIRD_PARTY.parents[1]
    for relative in ("scripts/fetch_third_party_tests.py", "tests/third_party_paths.py"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / relative, tmp_path / relative)
    if third_party:
        shutil.copytree(THIRD_PARTY, tmp_path / "tests" / "third_party", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}   # any download attempt fails at once
    return subprocess.run([sys.executable, str(tmp_path / "scripts" / "fetch_third_party_tests.py")],
                          capture_output=True, text=True, timeout=120, env=env)


def test_a_second_fetch_downloads_nothing(tmp_path):
    for name in (TIMM_TESTS, TRANSFORMERS_TESTS, *WHEELS):
        require_third_party(name)
    result = _fetcher_copy(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 + len(WHEELS) and all(": already in " in line for line in lines), (
        f"the fetched copy is not what the fetcher writes now: run `{FETCH_COMMAND}`\n{result.stdout}")


def test_a_failed_download_exits_1_with_one_line(tmp_path):
    result = _fetcher_copy(tmp_path, third_party=False)
    assert result.returncode == 1
    assert result.stderr.startswith("fetch_third_party_tests: error: timm ") and "pip download timm==" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
