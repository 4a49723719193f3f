"""Fetch third-party test code at test time (never committed): test suites from the source distributions of the
installed versions, and older releases of reference packages.

`fetch_transformers_tests()` downloads the transformers sdist matching `transformers.__version__` with pip,
extracts the common test modules into `tests/third_party/transformers_tests/` (gitignored) and writes small
stand-ins for the three modules the sdist does not ship (`generation/test_utils.py`,
`exporters/test_export.py`, `utils/test_configuration_utils.py`). The result is importable as the package
`transformers_tests` once `tests/third_party` is on `sys.path`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

THIRD_PARTY = Path(__file__).resolve().parent / "third_party"

# files taken from the sdist's tests/ folder
_TRANSFORMERS_FILES = ("test_modeling_common.py", "test_configuration_common.py")

# stand-ins for modules that exist only in the GitHub repository
_STUBS = {
    "generation/test_utils.py": (
        '"""Stand-in: GenerationTesterMixin is not shipped in the transformers sdist."""\n\n\n'
        "class GenerationTesterMixin:\n    all_generative_model_classes = ()\n"
    ),
    "exporters/test_export.py": (
        '"""Stand-in: ExportTesterMixin is not shipped in the transformers sdist."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "utils/test_configuration_utils.py": (
        '"""Stand-in for the GitHub file: common config kwargs with non-default values."""\n\n'
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "is_encoder_decoder": True,\n'
        '    "pruned_heads": {"a": 1},\n'
        '    "tie_word_embeddings": False,\n'
        '    "id2label": {0: "label"},\n'
        '    "label2id": {"label": "0"},\n'
        '    "problem_type": "regression",\n'
        "}\n"
    ),
}


class FetchError(RuntimeError):
    """pip could not download the source distribution (e.g. no package index reachable)."""


def _pip_download_sdist(package: str, version: str, dest: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "--disable-pip-version-check", "-d", str(dest), f"{package}=={version}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    archives = sorted(dest.glob(f"{package}-{version}.tar.gz"))
    if result.returncode != 0 or not archives:
        raise FetchError(f"pip download {package}=={version} failed: {result.stderr.strip()[-500:]}")
    return archives[0]


def fetch_wheel(package: str, version: str) -> Path:
    """Unpack the pure-Python wheel `package==version` into `tests/third_party/<package>-<version>/` and return
    that folder (put it first on `sys.path` to import that version). Raises `FetchError` if pip cannot get it."""
    import zipfile

    target = THIRD_PARTY / f"{package}-{version}"
    marker = target / "COMPLETE"
    if marker.is_file():
        return target
    THIRD_PARTY.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=THIRD_PARTY) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
                   "--disable-pip-version-check", "-d", tmp, f"{package}=={version}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise FetchError(f"pip download {package}=={version} failed: {result.stderr.strip()[-500:]}")
        staging = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(staging)
        (staging / "COMPLETE").write_text(f"{package}=={version}\n")
        if target.exists():
            import shutil

            shutil.rmtree(target)
        os.replace(staging, target)
    return target


def fetch_transformers_tests(version: str | None = None) -> Path:
    """Return the folder holding the `transformers_tests` package for the installed (or given) version.

    Downloads only once per version: a `VERSION` file marks a complete extraction. Raises `FetchError` if
    pip cannot download the sdist.
    """
    if version is None:
        import transformers

        version = transformers.__version__
    package_dir = THIRD_PARTY / "transformers_tests"
    marker = package_dir / "VERSION"
    if marker.is_file() and marker.read_text().strip() == version:
        return THIRD_PARTY
    THIRD_PARTY.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=THIRD_PARTY) as tmp:
        archive = _pip_download_sdist("transformers", version, Path(tmp))
        staging = Path(tmp) / "transformers_tests"
        staging.mkdir()
        with tarfile.open(archive) as tar:
            for name in _TRANSFORMERS_FILES:
                member = tar.getmember(f"transformers-{version}/tests/{name}")
                source = tar.extractfile(member)
                (staging / name).write_bytes(source.read())
        (staging / "__init__.py").write_text(f'"""transformers {version} common tests (from the sdist)."""\n')
        for relative, text in _STUBS.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(text)
        (staging / "VERSION").write_text(version + "\n")
        if package_dir.exists():
            import shutil

            shutil.rmtree(package_dir)
        os.replace(staging, package_dir)
    return THIRD_PARTY
