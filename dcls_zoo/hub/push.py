"""Push a Hub-ready folder to the Hugging Face Hub with huggingface_hub's upload API.

`push_folder` checks the folder first and refuses, with a ValueError that says what is wrong:
- any pickle (`.bin`, `.pt`, `.pth`, `.pkl`, `.ckpt`, ... or a file whose bytes are a pickle or a torch zip);
- a missing or unparsable model card (README.md);
- a config.json whose architecture is not registered (timm `architecture`, transformers `model_type`), which
  nobody could load.
Only the checked files are sent (`allow_patterns`), so nothing else in the folder can slip in. Before any upload it
checks that it can push at all and fails at once (RuntimeError) when `HF_HUB_OFFLINE` is set, no token is found, or
the endpoint cannot be reached. `dry_run=True` only checks and lists what would be sent.
"""
from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

from .save import CARD_NAME, CONFIG_NAME, folder_architecture

__all__ = ["PICKLE_SUFFIXES", "PushPlan", "check_folder", "push_folder", "check_can_push", "publish_all"]

_logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar", ".joblib", ".npy", ".npz")
_PICKLE_PROTOCOL_BYTE = 0x80   # every pickle of protocol >= 2 starts with PROTO 0x80
_TEXT_SUFFIXES = (".json", ".md", ".txt", ".yaml", ".yml", ".py", ".csv")

PathLike = Union[str, Path]


@dataclass(frozen=True)
class PushPlan:
    """What a push sends: the folder, the repo, and the files (relative paths, sizes in bytes)."""

    folder: Path
    repo_id: str
    files: tuple[tuple[str, int], ...]

    def describe(self) -> str:
        lines = [f"{len(self.files)} files from {self.folder} to {self.repo_id}:"]
        lines += [f"  {path}  ({size:,} bytes)" for path, size in self.files]
        return "\n".join(lines)


def _is_pickle(path: Path) -> bool:
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        return True
    if path.suffix.lower() in _TEXT_SUFFIXES or path.suffix == ".safetensors":
        return False
    with path.open("rb") as f:
        head = f.read(4)
    if head[:1] == bytes([_PICKLE_PROTOCOL_BYTE]):
        return True
    if head == b"PK\x03\x04":  # torch.save's zip format holds a data.pkl
        try:
            with zipfile.ZipFile(path) as z:
                return any(name.endswith(".pkl") for name in z.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def _check_config_known(folder: Path) -> None:
    kind, name = folder_architecture(folder)
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            raise ValueError(
                f"{folder / CONFIG_NAME}: architecture {name!r} is not a registered timm model; nobody could load "
                f"this folder (register it, e.g. by importing its package, or fix the config)"
            )
    else:
        from transformers import CONFIG_MAPPING

        if name not in CONFIG_MAPPING:
            raise ValueError(
                f"{folder / CONFIG_NAME}: model_type {name!r} is not registered with transformers' AutoConfig; "
                f"nobody could load this folder"
            )


def _check_card(folder: Path) -> None:
    from huggingface_hub import ModelCard

    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ValueError(
            f"{folder} has no model card ({CARD_NAME}); write one with dcls_zoo.hub.save_folder or "
            f"scripts/make_cards.py before pushing"
        )
    card = ModelCard.load(card_path)
    if not card.data.to_dict().get("library_name"):
        raise ValueError(f"{card_path}: the card's metadata has no library_name (timm or transformers)")


def check_folder(folder: PathLike) -> list[Path]:
    """Validate a folder for pushing; returns the files to send (relative). Raises ValueError on any problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    files = sorted(
        p.relative_to(folder) for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    pickles = [str(p) for p in files if _is_pickle(folder / p)]
    if pickles:
        raise ValueError(
            f"refusing to push {folder}: it holds pickled files ({', '.join(pickles)}); the zoo publishes "
            f"safetensors only (convert with `dcls-zoo convert`, then remove them)"
        )
    _check_card(folder)
    _check_config_known(folder)
    if not any(str(p).endswith(".safetensors") for p in files):
        raise ValueError(f"{folder} has no .safetensors weights")
    return files


def check_can_push(token: Optional[str] = None, endpoint: Optional[str] = None) -> str:
    """Fail at once (RuntimeError saying which) when offline, without a token, or when the Hub is unreachable.

    Returns the token to use.
    """
    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise RuntimeError("cannot push: HF_HUB_OFFLINE is set (offline mode); unset it to push")
    token = token or get_token()
    if not token:
        raise RuntimeError("cannot push: no Hugging Face token; set HF_TOKEN or run `hf auth login`")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.whoami()
    except Exception as e:  # network errors come from httpx2, HTTP errors from huggingface_hub
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise RuntimeError(f"cannot push: the Hub at {api.endpoint} rejected the token ({status})") from None
        raise RuntimeError(
            f"cannot push: no connection to the Hub at {api.endpoint} ({type(e).__name__}: {e})"
        ) from None
    return token


def push_folder(
    folder: PathLike,
    repo_id: str,
    *,
    dry_run: bool = False,
    token: Optional[str] = None,
    private: bool = False,
    commit_message: Optional[str] = None,
    endpoint: Optional[str] = None,
) -> PushPlan:
    """Upload a checked folder to `repo_id` (created if needed); returns the plan (what was, or would be, sent)."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must be 'org/name', got {repo_id!r}")
    folder = Path(folder)
    files = check_folder(folder)
    plan = PushPlan(folder, repo_id, tuple((str(p), (folder / p).stat().st_size) for p in files))
    if dry_run:
        return plan
    from huggingface_hub import HfApi

    token = check_can_push(token, endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    kind, name = folder_architecture(folder)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=[p.as_posix() for p in files],
        ignore_patterns=[f"*{s}" for s in PICKLE_SUFFIXES],
        commit_message=commit_message or f"Upload {name} ({kind}) converted by dcls-zoo",
    )
    _logger.info("pushed %d files to %s", len(files), repo_id)
    return plan


def publish_all(
    root: PathLike,
    *,
    org: Optional[str] = None,
    dry_run: bool = False,
    published: Optional[Iterable[str]] = None,
    token: Optional[str] = None,
) -> tuple[list[PushPlan], list[str]]:
    """Push every converted folder under `root` (one per model, named `<architecture>.<tag>`) to `<org>/<name>`.

    Folders of models that are not published (no facts row, or `published` given and not in it) are skipped.
    Every folder is checked before the first upload, so a bad folder stops the run before anything is sent.
    Returns (plans, skipped folder names).
    """
    from .cards import HUB_ORG, hub_id, published_models

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    names = set(published) if published is not None else {f.name for f in published_models()}
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    selected = [f for f in folders if f.name in names]
    skipped = [f.name for f in folders if f.name not in names]
    if not selected:
        raise ValueError(f"no folder under {root} is named after a published model")
    for folder in selected:
        check_folder(folder)
    plans = [push_folder(f, hub_id(f.name, org or HUB_ORG), dry_run=dry_run, token=token) for f in selected]
    return plans, skipped
