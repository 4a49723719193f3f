"""Where the third-party test code lies once `scripts/fetch_third_party_tests.py` has fetched it (git-ignored,
never committed), and `require_third_party` for the tests that use it.

The suite downloads nothing: `make test` runs the fetcher once before pytest. A test whose third-party code is
missing, or was fetched for another installed version, fails with one line naming the fetch command.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

THIRD_PARTY = Path(__file__).resolve().parent / "third_party"
FETCH_COMMAND = "python3 scripts/fetch_third_party_tests.py"

# Each fetched item: its folder under THIRD_PARTY, the marker file the fetcher writes last (its text says what
# was fetched), and the distribution whose installed version it must match (None: a fixed version).
TIMM_TESTS = "timm"                      # timm's tests/test_models.py, for the installed timm (marker VERSION)
TRANSFORMERS_TESTS = "transformers_tests"  # transformers' common test mixins, for the installed transformers
WHEELS = {"torchortho-0.1.1": ("torchortho", "0.1.1")}  # folder -> (distribution, version), unpacked (COMPLETE)
VERSION_MARKER = "VERSION"
COMPLETE_MARKER = "COMPLETE"


def fetched_version(folder: str) -> str | None:
    """The version written in `THIRD_PARTY/folder`'s marker, or None when it was never (completely) fetched."""
    marker = THIRD_PARTY / folder / (COMPLETE_MARKER if folder in WHEELS else VERSION_MARKER)
    return marker.read_text().strip() if marker.is_file() else None


def expected_version(folder: str) -> str:
    """The version `THIRD_PARTY/folder` must hold: the installed library's, or the wheel's fixed one."""
    if folder in WHEELS:
        return "==".join(WHEELS[folder])
    return importlib.metadata.version({TIMM_TESTS: "timm", TRANSFORMERS_TESTS: "transformers"}[folder])


def require_third_party(name: str) -> Path:
    """The folder to put on `sys.path` for `name`: "transformers_tests" (gives the `transformers_tests` package:
    `tests/third_party`), "torchortho-0.1.1" (the unpacked wheel) or "timm" (timm's tests). Fails the calling
    test when it was not fetched for what is installed."""
    import pytest

    if name not in (TIMM_TESTS, TRANSFORMERS_TESTS, *WHEELS):
        raise ValueError(f"unknown third-party test code {name!r}; one of: {TIMM_TESTS}, {TRANSFORMERS_TESTS}, "
                         f"{', '.join(WHEELS)}")
    found, expected = fetched_version(name), expected_version(name)
    if found != expected:
        state = "missing" if found is None else f"fetched for {found}"
        pytest.fail(f"tests/third_party/{name} is {state}, the tests need {expected}: run `{FETCH_COMMAND}`",
                    pytrace=False)
    return THIRD_PARTY if name == TRANSFORMERS_TESTS else THIRD_PARTY / name
