"""Push a Hub-ready folder to the Hugging Face Hub with huggingface_hub's commit API.

`push_folder` checks the whole folder before anything is sent (also with `dry_run=True`) and refuses, with one
ValueError line naming the file:
- any symbolic link (file or folder; a linked `checkpoints/` or `logs/` is skipped without being followed), and
  anything that is not a plain file or folder;
- any pickle, found by content whatever the name: a pickle stream, a torch zip checkpoint (`data.pkl` inside),
  a tar archive (torch's legacy format), a numpy file; and the usual pickle suffixes (`.bin`, `.pt`, `.pkl`, ...);
- a config.json with fields of the wrong type, or an architecture (timm `architecture`, transformers
  `model_type`) that is not registered;
- weights that do not parse, that differ from the sha256 recorded beside them, or whose tensor names and shapes do
  not fit the architecture in config.json (built on the meta device: no memory, no weights);
- a missing or unparsable model card (README.md).
What `dcls-zoo train` leaves beside the model (`RUN_STATE_DIRS`: `checkpoints/`, `logs/`) is skipped explicitly,
and the plan says so; hidden entries (`.git`, `.cache`, ...) are skipped too. Only the checked files are sent,
each opened without following links and compared to the checked bytes by sha256, so nothing else can slip in.
Before any upload
it checks that it can push at all and fails at once (RuntimeError) when `HF_HUB_OFFLINE` is set, no token is found,
or the endpoint cannot be reached.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickletools
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

from ..models._files import (
    CHECKSUM_NAME,
    read_config,
    read_safetensors_header,
    verify_checksum,
)
from .save import (
    CARD_NAME,
    CONFIG_NAME,
    SHARED_METADATA_KEY,
    WEIGHTS_NAME,
    _tie_map_of,
    check_state_dict_fits,
    folder_architecture,
)

__all__ = ["PICKLE_SUFFIXES", "RUN_STATE_DIRS", "PushPlan", "check_folder", "plan_folder", "push_folder",
           "check_can_push", "publish_all", "pickle_kind"]

_logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar", ".joblib", ".npy", ".npz")
# Top-level folders of a `dcls-zoo train` output that are not part of the model, with why they stay behind:
# dcls_zoo.train.trainer's CHECKPOINT_DIR and LOGS_DIR (a test holds them equal; hub sits below train in the
# import order, so it cannot import them).
RUN_STATE_DIRS = {
    "checkpoints": "resume state of `dcls-zoo train`, not part of the model",
    "logs": "training logs of `dcls-zoo train` (metrics.jsonl, TensorBoard); the card and all_results.json carry "
            "the results",
}
_SNIFF_BYTES = 1 << 20

PathLike = Union[str, Path]


@dataclass(frozen=True)
class PushPlan:
    """What a push sends: the folder, the repo, the files (relative paths, sizes in bytes) and what it skips."""

    folder: Path
    repo_id: str
    files: tuple[tuple[str, int], ...]
    skipped: tuple[tuple[str, str], ...] = ()
    sha256: dict = field(default_factory=dict, compare=False, repr=False)

    def describe(self) -> str:
        lines = [f"{len(self.files)} files from {self.folder} to {self.repo_id}:"]
        lines += [f"  {path}  ({size:,} bytes)" for path, size in self.files]
        lines += [f"  skipped {path} ({why})" for path, why in self.skipped]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# what a file is, by content
# --------------------------------------------------------------------------------------------------------------

def _is_pickle_stream(head: bytes) -> bool:
    """True when `head` parses as a pickle from its first byte up to STOP (what pickle.load / torch.load would
    run), or fills the sniffed window without a parse error (a long pickle). Parsing runs nothing."""
    stream = io.BytesIO(head)
    try:
        for opcode, _, _ in pickletools.genops(stream):
            if opcode.name == "STOP":
                return True
    except Exception:  # unknown opcode, bad argument: not a pickle (or the window ends inside a long one)
        return len(head) == _SNIFF_BYTES and stream.tell() >= len(head) - 64
    return False


def _is_safetensors(path: Path) -> bool:
    try:
        read_safetensors_header(path)
    except (ValueError, OSError):
        return False
    return True


def pickle_kind(path: PathLike) -> Optional[str]:
    """What pickled content `path` holds ('pickle stream', 'torch zip checkpoint', ...), or None.

    Decided by the bytes, whatever the name; a file that parses as safetensors is safetensors.
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith(b"\x93NUMPY"):
        return "numpy array file (may hold pickled objects)"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if info.filename.endswith((".pkl", ".npy")):
                        return f"zip archive with {info.filename} (a torch or numpy checkpoint)"
                    with z.open(info) as member:
                        if _is_pickle_stream(member.read(_SNIFF_BYTES)):
                            return f"zip archive with a pickled member ({info.filename})"
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError):
            return "unreadable zip archive"
        return None
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar archive (torch's legacy checkpoint format)"
    protocol_header = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5   # PROTO n, as torch.save writes
    if (protocol_header or _is_pickle_stream(head)) and not _is_safetensors(path):
        return "pickle stream"
    return None


# --------------------------------------------------------------------------------------------------------------
# folder checks
# --------------------------------------------------------------------------------------------------------------

def _walk(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """(files to check, skipped entries) of `folder`, refusing links and special files; nothing is followed."""
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    links: list[str] = []
    specials: list[str] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        rel_root = Path(root).relative_to(folder)
        for name in sorted(dirs + names):
            path = Path(root) / name
            rel = rel_root / name
            mode = os.lstat(path).st_mode
            if rel_root == Path(".") and name in RUN_STATE_DIRS and stat.S_ISLNK(mode):
                # resume state kept on another disk: skipped like the folder itself, and not followed
                skipped.append((f"{name}/", RUN_STATE_DIRS[name] + "; a symbolic link, not followed"))
            elif stat.S_ISLNK(mode):
                links.append(rel.as_posix())
            elif name.startswith("."):
                skipped.append((rel.as_posix() + ("/" if stat.S_ISDIR(mode) else ""), "hidden"))
            elif stat.S_ISDIR(mode):
                if rel_root == Path(".") and name in RUN_STATE_DIRS:
                    skipped.append((f"{name}/", RUN_STATE_DIRS[name]))
            elif stat.S_ISREG(mode):
                files.append(rel)
            else:
                specials.append(rel.as_posix())
        # do not descend into what is skipped (or refused)
        dirs[:] = [d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d))
                   and not (rel_root == Path(".") and d in RUN_STATE_DIRS)]
    if links:
        raise ValueError(
            f"refusing to push {folder}: it holds symbolic links ({', '.join(links)}); a link can point anywhere "
            f"(other files would be sent): replace each by a copy of the file it points to, or remove it"
        )
    if specials:
        raise ValueError(f"refusing to push {folder}: {', '.join(specials)} are not regular files; remove them")
    return sorted(files), skipped


def _check_card(folder: Path) -> None:
    from huggingface_hub import ModelCard

    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ValueError(
            f"{folder} has no model card ({CARD_NAME}); write one with dcls_zoo.hub.save_folder or "
            f"scripts/make_cards.py before pushing"
        )
    try:
        card = ModelCard.load(card_path)
    except Exception as e:  # YAML errors of several kinds
        raise ValueError(f"{card_path}: the card's metadata does not parse ({type(e).__name__}: {e})") from None
    if not card.data.to_dict().get("library_name"):
        raise ValueError(f"{card_path}: the card's metadata has no library_name (timm or transformers)")


def _saved_tensors(folder: Path, weights: list[Path]) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every tensor the weights files hold, shared-tensor aliases expanded."""
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    for rel in weights:
        tensors, metadata = read_safetensors_header(folder / rel)
        shapes.update({k: shape for k, (_, shape) in tensors.items()})
        if SHARED_METADATA_KEY in metadata:
            for stored, aliases in _tie_map_of(folder / rel).items():
                if stored not in tensors:
                    raise ValueError(f"{folder / rel}: tie map names {stored!r}, which the file does not hold")
                shapes.update({alias: tensors[stored][1] for alias in aliases})
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def _check_timm_weights(folder: Path, weights: list[Path]) -> None:
    import timm
    import torch
    from ..models._timm_private import load_model_config_from_path

    pretrained_cfg, model_name, model_args = load_model_config_from_path(folder)
    if not timm.is_model(model_name):
        raise ValueError(
            f"{folder / CONFIG_NAME}: architecture {model_name!r} is not a registered timm model; nobody could load "
            f"this folder (register it, e.g. by importing its package, or fix the config)"
        )
    if WEIGHTS_NAME not in {p.as_posix() for p in weights}:
        raise ValueError(f"{folder} has no {WEIGHTS_NAME} (timm loads the weights of a folder from that file)")
    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, pretrained_cfg=pretrained_cfg, **model_args)
    except Exception as e:  # the architecture's own argument checks
        raise ValueError(
            f"{folder / CONFIG_NAME}: {model_name} cannot be built from its model_args {model_args} "
            f"({type(e).__name__}: {e})"
        ) from None
    check_state_dict_fits(_saved_tensors(folder, [Path(WEIGHTS_NAME)]), model,
                          source=f"{folder / WEIGHTS_NAME} (checked against {CONFIG_NAME})")


def _check_transformers_weights(folder: Path, model_type: str, weights: list[Path]) -> None:
    import torch
    import transformers
    from transformers import CONFIG_MAPPING, AutoConfig

    if model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"{folder / CONFIG_NAME}: model_type {model_type!r} is not registered with transformers' AutoConfig; "
            f"nobody could load this folder"
        )
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except Exception as e:  # transformers' own validation of the fields
        raise ValueError(f"{folder / CONFIG_NAME}: transformers cannot read it ({type(e).__name__}: {e})") from None
    names = list(getattr(config, "architectures", None) or [])
    model_cls = None
    if names:
        import dcls_zoo.lm

        model_cls = getattr(transformers, names[0], None) or getattr(dcls_zoo.lm, names[0], None)
    if model_cls is None:
        raise ValueError(f"{folder / CONFIG_NAME}: 'architectures' ({names}) names no class transformers knows")
    with torch.device("meta"):
        model = model_cls(config)
    saved = _saved_tensors(folder, weights)
    # transformers stores one of each group of tied parameters (lm_head.weight <-> wte.weight)
    groups: dict[int, list[str]] = {}
    for name, tensor in list(model.named_parameters(remove_duplicate=False)) + \
            list(model.named_buffers(remove_duplicate=False)):
        groups.setdefault(id(tensor), []).append(name)
    expected = model.state_dict()
    missing = [names[0] for names in groups.values()
               if names[0] in expected and not any(n in saved for n in names)]
    unexpected = [k for k in saved if k not in expected]
    mismatched = [f"{k} {tuple(saved[k].shape)} vs {tuple(expected[k].shape)}" for k in saved
                  if k in expected and tuple(saved[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{', '.join(str(folder / w) for w in weights)} does not fit {names[0]} of {CONFIG_NAME}: missing "
            f"{missing[:8]}, unexpected {unexpected[:8]}, shape mismatches {mismatched[:8]}"
        )


def _check_weights_and_config(folder: Path, files: list[Path]) -> None:
    library, architecture = folder_architecture(folder)   # config.json's fields and types checked here
    weights = [p for p in files if p.suffix == ".safetensors"]
    if not weights:
        raise ValueError(f"{folder} has no .safetensors weights")
    for rel in weights:
        read_safetensors_header(folder / rel)
        verify_checksum(folder / rel)
    if library == "timm":
        _check_timm_weights(folder, weights)
    else:
        _check_transformers_weights(folder, architecture, weights)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def plan_folder(folder: PathLike, repo_id: str = "") -> PushPlan:
    """Check `folder` for pushing (everything in the module docstring); returns what would be sent and skipped.

    Raises ValueError on any problem, before anything is sent."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    files, skipped = _walk(folder)
    suffixed = [p.as_posix() for p in files if p.name.lower().endswith(PICKLE_SUFFIXES)]
    by_content = [f"{p.as_posix()}: {kind}" for p in files
                  if p.as_posix() not in suffixed and (kind := pickle_kind(folder / p))]
    if suffixed or by_content:
        raise ValueError(
            f"refusing to push {folder}: it holds pickled files ({', '.join(suffixed + by_content)}); the zoo "
            f"publishes safetensors only (convert with `dcls-zoo convert`, then remove them)"
        )
    if (folder / CHECKSUM_NAME).is_file() and not (folder / WEIGHTS_NAME).is_file():
        raise ValueError(f"{folder / CHECKSUM_NAME} records weights that are not there ({WEIGHTS_NAME})")
    _check_card(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise ValueError(f"{folder} has no {CONFIG_NAME}; nobody could load it")
    _check_weights_and_config(folder, files)
    hashes = {p.as_posix(): _sha256(folder / p) for p in files}   # what is sent must be these bytes
    return PushPlan(folder, repo_id, tuple((p.as_posix(), (folder / p).stat().st_size) for p in files),
                    skipped=tuple(skipped), sha256=hashes)


def check_folder(folder: PathLike) -> list[Path]:
    """Validate a folder for pushing; returns the files to send (relative). Raises ValueError on any problem."""
    return [Path(p) for p, _ in plan_folder(folder).files]


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


def _open_checked(folder: Path, rel: str, expected_sha256: str) -> io.BufferedReader:
    """Open a checked file without following links; its bytes must still be the checked ones."""
    fd = os.open(folder / rel, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    f = os.fdopen(fd, "rb")
    digest = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    if digest.hexdigest() != expected_sha256:
        f.close()
        raise ValueError(f"{folder / rel} changed after it was checked; nothing was sent, push again")
    f.seek(0)
    return f


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
    plan = plan_folder(folder, repo_id)
    if dry_run:
        return plan
    from huggingface_hub import CommitOperationAdd, HfApi

    token = check_can_push(token, endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    config = read_config(folder / CONFIG_NAME)
    kind, name = ("timm", config["architecture"]) if "architecture" in config else ("transformers",
                                                                                    config["model_type"])
    handles = []
    try:
        for rel, _ in plan.files:
            handles.append(_open_checked(folder, rel, plan.sha256[rel]))
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(
            repo_id=repo_id,
            operations=[CommitOperationAdd(rel, f) for (rel, _), f in zip(plan.files, handles)],
            commit_message=commit_message or f"Upload {name} ({kind}) with dcls-zoo",
        )
    finally:
        for f in handles:
            f.close()
    _logger.info("pushed %d files to %s", len(plan.files), repo_id)
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
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    selected = [f for f in folders if f.name in names]
    skipped = [f.name for f in folders if f.name not in names]
    if not selected:
        raise ValueError(f"no folder under {root} is named after a published model")
    for folder in selected:
        plan_folder(folder)
    plans = [push_folder(f, hub_id(f.name, org or HUB_ORG), dry_run=dry_run, token=token) for f in selected]
    return plans, skipped
