"""Test settings: one thread per process and an offline, throw-away Hugging Face cache.

These are set before anything imports torch or huggingface_hub, so every test (and every subprocess a test
starts) sees them.
"""
import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
_hf_home = tempfile.mkdtemp(prefix="dcls_zoo_hf_")
os.environ["HF_HOME"] = _hf_home
os.environ["HF_HUB_CACHE"] = os.path.join(_hf_home, "hub")
os.environ["HF_MODULES_CACHE"] = os.path.join(_hf_home, "modules")

import torch  # noqa: E402

torch.set_num_threads(1)

import dcls_zoo  # noqa: E402,F401  (registers every model before test modules are collected)
