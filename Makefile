# The two set-up commands of the README. Each works alone on a fresh machine: it installs what it needs first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# One thread per process (2-core machines: oversubscription makes small tests 3-10x slower), offline Hub; learnable
# activations eager unless a test asks for compiled=True (a cold Inductor compile costs seconds per kind and dtype).
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_XET=1 \
	DCLS_ZOO_COMPILED_ACTIVATIONS=0
# verbosity_subtests=0: passing subtests (transformers' ModelTesterMixin uses unittest subTest) print nothing
# instead of runs of `u` that read like failures; failed subtests are still reported. --durations: the slowest.
PYTEST_ARGS ?= -n 2 -q -p no:cacheprovider --timeout=900 -o verbosity_subtests=0 --durations=15

.PHONY: install install-test demo test readme

# torch and torchvision are installed together first (a matching pair; other pairs fail to import
# torchvision, which timm needs), then the package, so pip keeps that torch. From PyPI, Linux gets the CUDA
# build (torch plus its nvidia-* libraries: about 5 GB on disk), also on machines without a GPU; on such machines
# `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` installs the CPU build (no nvidia-* libraries).
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

install:
	$(PIP) install --quiet $(TORCH_PIP_ARGS) "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install --quiet -e ".[train]"

install-test:
	$(PIP) install --quiet $(TORCH_PIP_ARGS) "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install --quiet -e ".[train,test]"

# README command 1: the main job on its embedded default.
demo: install
	dcls-zoo train

# README command 2: the whole test suite. The third-party test code it runs is fetched first, once (timm's model
# tests and transformers' test mixins for the installed versions, the torchortho 0.1.1 wheel).
test: install-test
	$(PYTHON) scripts/fetch_third_party_tests.py
	$(TEST_ENV) $(PYTHON) -m pytest $(PYTEST_ARGS)

# Regenerate the README's model table from the registry.
readme:
	dcls-zoo models --write-readme README.md
