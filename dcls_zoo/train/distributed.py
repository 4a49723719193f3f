"""Sharded training engines (FSDP2, DeepSpeed ZeRO) with the DCLS recipe intact.

What the engines need from a zoo model, and what this module provides:

- FSDP2 (`torch.distributed.fsdp.fully_shard`) shards parameters per *unit* (a module given to `fully_shard`);
  a parameter used by two units breaks it ("Parameter ... is shared with a parameter already managed by another
  FSDP group", or a layer reading another unit's still-sharded tensor). DCLS positions are shared by the layers of
  a stage and kernel-sharing models tie the convolutions of a stage, so `fsdp2_units(model)` picks units that keep
  every shared tensor inside one of them: the blocks of a transformers model (its `_no_split_modules`, as
  transformers' own FSDP integration does), the stages of a timm model (`feature_info`), each widened to the
  smallest module that holds all users of a shared tensor. `apply_fsdp2(model)` shards with them.
- The clamp must reach the copy the optimizer updates: FSDP2's sharded DTensor (`clamp_dcls_parameters` clamps
  each process's shard), DeepSpeed's fp32 master partition (ZeRO-1/2 copy it back into the model at every step,
  ZeRO-3 keeps the model's parameters empty outside a gather). `clamp_dcls_positions(model)` handles all three.
- Saving: a sharded model's `state_dict()` holds DTensor shards (FSDP2) or empty tensors (ZeRO-3). The trainer
  gathers the full state dict (`gather_full_state_dict`) and saves it from a plain copy of the model.
- Accelerate enables FSDP and DeepSpeed only on accelerator devices; on a CPU machine the same config runs as
  plain DDP. `check_engine_supported` refuses that in one line (and says what would run).

On CPU, FSDP2 runs under `torchrun` with the trainer's own `fully_shard` (`dcls-zoo train --distributed fsdp2`);
DeepSpeed's engine runs with `DS_ACCELERATOR=cpu` when driven directly (`deepspeed.initialize`).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Optional

import torch
import torch.nn as nn

from ..layers import DclsNd, clamp_dcls_parameters
from ..layers.sharing import tied_owner_modules

_logger = logging.getLogger(__name__)

__all__ = [
    "fsdp2_units", "check_fsdp2_units", "apply_fsdp2", "is_fsdp2_model", "gather_full_state_dict",
    "load_full_state_dict", "clamp_dcls_positions", "deepspeed_config", "requested_engine", "check_engine_supported",
    "select_engine", "Fsdp2ModelState", "Fsdp2OptimizerState",
]

# --------------------------------------------------------------------------------------------------------------
# FSDP2 units
# --------------------------------------------------------------------------------------------------------------

def _users_of_shared_tensors(model: nn.Module) -> list[list[str]]:
    """For every tensor used by more than one module: the names of all modules that use it.

    A module uses a tensor it registers (several modules may register one Parameter object) or one it reads from
    an owner module (the zoo's `TiedParametersMixin` followers, e.g. the DCLS layers of a stage).
    """
    users: dict[int, set[str]] = {}
    names = {id(m): name for name, m in model.named_modules()}
    for name, module in model.named_modules(remove_duplicate=False):
        for p in module._parameters.values():
            if p is not None:
                users.setdefault(id(p), set()).add(name)
        for attr, owner in tied_owner_modules(module).items():
            p = getattr(owner, attr, None)
            if isinstance(p, torch.Tensor):
                users.setdefault(id(p), set()).add(name)
                if id(owner) in names:
                    users[id(p)].add(names[id(owner)])
    return [sorted(u) for u in users.values() if len(u) > 1]


def _common_prefix(names: Iterable[str]) -> str:
    split = [n.split(".") if n else [] for n in names]
    prefix: list[str] = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        prefix.append(parts[0])
    return ".".join(prefix)


def _inside(name: str, unit: str) -> bool:
    return unit == "" or name == unit or name.startswith(unit + ".")


def _candidate_units(model: nn.Module) -> list[str]:
    modules = dict(model.named_modules())
    no_split = getattr(model, "_no_split_modules", None)
    if no_split:  # transformers: the decoder blocks, as transformers' FSDP integration wraps them
        return [name for name, m in modules.items() if name and type(m).__name__ in set(no_split)]
    feature_info = getattr(model, "feature_info", None)
    if feature_info:  # timm: the stages
        stages = [info["module"] for info in feature_info if info.get("module") in modules]
        stages = [s for s in dict.fromkeys(stages) if s and any(True for _ in modules[s].parameters())]
        if stages:
            return stages
    # anything else: the top-level children that hold parameters
    return [name for name, child in model.named_children() if any(True for _ in child.parameters())]


def fsdp2_units(model: nn.Module) -> list[nn.Module]:
    """The submodules to give to `fully_shard` (innermost first), before the model itself.

    Starts from the model's natural units (transformers blocks, timm stages, else top-level children) and widens
    any unit that holds only some of the users of a shared tensor (DCLS positions shared across stages, tied
    kernels) to the smallest module that holds all of them; a tensor whose users meet only at the root stays with
    the root unit. Every shared tensor thus lives in exactly one FSDP unit.
    """
    units = set(_candidate_units(model))
    shared = [(users, _common_prefix(users)) for users in _users_of_shared_tensors(model)]
    changed = True
    while changed:
        changed = False
        for users, lca in shared:
            for unit in list(units):
                if unit == "" or _inside(lca, unit):
                    continue  # the unit holds every user
                if any(_inside(u, unit) for u in users):
                    units.discard(unit)
                    if lca:
                        units.add(lca)
                    changed = True
    units.discard("")
    modules = dict(model.named_modules())
    # innermost first: fully_shard must see a unit's sub-units before the unit
    ordered = sorted(units, key=lambda n: (-n.count("."), n))
    return [modules[name] for name in ordered]


def is_fsdp2_model(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(model, FSDPModule)


def check_fsdp2_units(model: nn.Module, units: Iterable[nn.Module]) -> None:
    """Raise ValueError (one line) if `units` would split the users of a shared tensor between FSDP2 units (what
    per-block or size-based wrapping does to DCLS positions shared by a stage)."""
    names = {id(m): name for name, m in model.named_modules()}
    unit_names = []
    for unit in units:
        if id(unit) not in names:
            raise ValueError(f"check_fsdp2_units: a {type(unit).__name__} given as a unit is not part of the model")
        unit_names.append(names[id(unit)])
    for users in _users_of_shared_tensors(model):
        for unit in unit_names:
            inside = [u for u in users if _inside(u, unit)]
            if unit and inside and len(inside) < len(users):
                outside = [u for u in users if u not in inside]
                raise ValueError(f"FSDP2 unit {unit!r} holds {inside[0]!r} but not {outside[0]!r}, which uses the same "
                                 f"tensor (shared DCLS positions or a tied kernel); make the unit "
                                 f"{_common_prefix(users) or 'the model'!r} or use fsdp2_units(model)")


def apply_fsdp2(model: nn.Module, mesh: Any = None, units: Optional[Iterable[nn.Module]] = None,
                **fully_shard_kwargs: Any) -> nn.Module:
    """Shard `model` in place with FSDP2: `fully_shard` on each unit (default `fsdp2_units(model)`; given `units`
    are checked with `check_fsdp2_units` and must be innermost first), then on the model.

    `mesh` defaults to a 1-D mesh over all processes on the current device type (cuda if available, else cpu);
    the process group must be initialised (torchrun / accelerate launch). Extra keyword arguments (e.g.
    `mp_policy`, `reshard_after_forward`) go to every `fully_shard` call. Build the optimizer afterwards, on the
    sharded parameters.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    units = fsdp2_units(model) if units is None else list(units)
    check_fsdp2_units(model, units)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("apply_fsdp2 needs an initialised process group: launch with torchrun or "
                           "accelerate launch (or call torch.distributed.init_process_group first)")
    if mesh is None:
        from torch.distributed.device_mesh import init_device_mesh

        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for unit in units:
        fully_shard(unit, mesh=mesh, **fully_shard_kwargs)
    fully_shard(model, mesh=mesh, **fully_shard_kwargs)
    return model


# --------------------------------------------------------------------------------------------------------------
# Full state dicts of a sharded model
# --------------------------------------------------------------------------------------------------------------

def gather_full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict on CPU. Collective: call it on every process; under FSDP2 only
    process 0 receives the tensors (the others get an empty dict), other models return their own state dict."""
    if is_fsdp2_model(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_full_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (as `gather_full_state_dict` gives on process 0) into a sharded FSDP2 model; every
    process passes the same full state dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state_dict, options=StateDictOptions(full_state_dict=True))


# --------------------------------------------------------------------------------------------------------------
# The clamp, on whatever copy the engine updates
# --------------------------------------------------------------------------------------------------------------

def _unique_position_layers(model: nn.Module) -> list[tuple[DclsNd, torch.Tensor]]:
    seen: dict[int, tuple[DclsNd, torch.Tensor]] = {}
    for module in model.modules():
        if isinstance(module, DclsNd) and module.P is not None:
            seen.setdefault(id(module.P), (module, module.P))
    return list(seen.values())


def _clamp_full(value: torch.Tensor, dilated_kernel_size: Iterable[int]) -> torch.Tensor:
    value = value.clone()
    for d, size in enumerate(dilated_kernel_size):
        value[d].clamp_(-(size // 2), size // 2)
    return value


@torch.no_grad()
def _clamp_deepspeed(model: nn.Module) -> None:
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    for layer, P in _unique_position_layers(model):
        master = safe_get_full_fp32_param(P)  # collective (all-reduce of the fragments)
        if master is not None:
            safe_set_full_fp32_param(P, _clamp_full(master, layer.dilated_kernel_size))
        if hasattr(P, "ds_id"):  # ZeRO-3: the model's copy is a partition; rewrite it from a gather
            import deepspeed

            with deepspeed.zero.GatheredParameters([P], modifier_rank=0):
                if P.numel():
                    P.copy_(_clamp_full(P, layer.dilated_kernel_size))
        else:  # ZeRO-1/2: every process holds the model's copy whole
            P.copy_(_clamp_full(P, layer.dilated_kernel_size))


def _is_deepspeed_param(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id") or getattr(p, "_hp_mapping", None) is not None


def clamp_dcls_positions(model: nn.Module) -> None:
    """Clamp every DCLS position of `model` into its grid in the copy the optimizer updates.

    Plain and FSDP2 models: `clamp_dcls_parameters` (the stored tensor, or each process's shard). DeepSpeed
    ZeRO-1/2/3 (the module inside the engine): the fp32 master partition and the model's copy. Collective under
    DeepSpeed: call it on every process, after each optimizer step.
    """
    layers = _unique_position_layers(model)
    if layers and any(_is_deepspeed_param(P) for _, P in layers):
        _clamp_deepspeed(model)
    else:
        clamp_dcls_parameters(model)


# --------------------------------------------------------------------------------------------------------------
# DeepSpeed and Accelerate settings
# --------------------------------------------------------------------------------------------------------------

def deepspeed_config(zero_stage: int, *, micro_batch_size: int, grad_accum_steps: int = 1,
                     clip_grad: Optional[float] = None, world_size: int = 1, bf16: bool = False) -> dict[str, Any]:
    """A DeepSpeed config for the trainer's settings: its `clip_grad` (None = no clipping; DeepSpeed would clip
    at 1.0 by default), the client optimizer (timm's, with the DCLS parameter groups), ZeRO `zero_stage`, and
    full 16-bit weights gathered on save under ZeRO-3."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
        "gradient_clipping": float(clip_grad or 0.0),
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bool(bf16)},
        "steps_per_print": 2 ** 31,
    }


def requested_engine() -> Optional[str]:
    """The sharded engine `accelerate launch` was asked for (from the variables it sets): 'deepspeed', 'fsdp1',
    'fsdp2', or None."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return f"fsdp{os.environ.get('FSDP_VERSION', '1')}"
    return None


def check_engine_supported(accelerator: Any) -> Optional[str]:
    """Raise ValueError (one line) when the accelerate config asks for FSDP or DeepSpeed but Accelerate did not
    enable it (it does so only on accelerator devices: on CPU the run would silently be DDP) or asks for FSDP1.
    Returns the active engine ('fsdp2', 'deepspeed') or None."""
    from accelerate.utils import DistributedType

    engine = requested_engine()
    active = accelerator.distributed_type
    if engine is None:
        return None
    if active not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        runs = f"{active.value} with {accelerator.num_processes} process(es)"
        hint = ("for FSDP2 on CPU run `torchrun --nproc_per_node N -m dcls_zoo.cli train --distributed fsdp2 ...`"
                if engine.startswith("fsdp") else "DeepSpeed needs GPUs under accelerate launch")
        raise ValueError(f"the accelerate config asks for {engine}, but Accelerate enables it only on GPUs/"
                         f"accelerators: on device {accelerator.device} this run would silently be {runs}; {hint}, "
                         f"or drop the {engine} settings to train with plain DDP")
    if engine == "fsdp1":
        raise ValueError("the accelerate config asks for FSDP version 1: DCLS positions and shared kernels are "
                         "tied across blocks, which FSDP1's flat parameters do not keep; set fsdp_version: 2 "
                         "(accelerate_configs/fsdp2.yaml)")
    return engine


# --------------------------------------------------------------------------------------------------------------
# What the trainer uses
# --------------------------------------------------------------------------------------------------------------

def select_engine(accelerator: Any, cfg: Any) -> Optional[str]:
    """The sharded engine of a `Trainer` run ('fsdp2', 'deepspeed' or None), after the checks that refuse what
    would not run as asked (one-line ValueErrors). `cfg.distributed == 'fsdp2'` asks for the zoo's own FSDP2
    (`apply_fsdp2`), e.g. under torchrun on CPU where Accelerate does not enable FSDP."""
    engine = check_engine_supported(accelerator)
    if cfg.distributed == "fsdp2":
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("--distributed fsdp2 needs several processes: launch with `torchrun --nproc_per_node N "
                             "-m dcls_zoo.cli train ...` (or accelerate launch); a single process has nothing to "
                             "shard with")
        if engine == "deepspeed":
            raise ValueError("--distributed fsdp2 and an accelerate DeepSpeed config ask for two engines: give one")
        if engine is None and accelerator.mixed_precision != "no":
            raise ValueError(f"--distributed fsdp2 outside an accelerate FSDP config trains in fp32 (it shards with "
                             f"the zoo's own fully_shard and no mixed-precision policy); got mixed precision "
                             f"{accelerator.mixed_precision}: pass --mixed-precision no")
        engine = "fsdp2"
    if engine is not None and cfg.model_ema_decay is not None:
        raise ValueError(f"--model-ema-decay is not supported with {engine}: the EMA copy would average sharded "
                         "parameters; train without it")
    if engine == "deepspeed":
        if cfg.resume:
            # the trainer's checkpoints hold the full model, but the optimiser state of a ZeRO run lives in its
            # partitions; an exact continuation would need DeepSpeed's own checkpoint format
            raise ValueError("--resume is not supported under DeepSpeed yet (the optimiser state is partitioned); "
                             "resume with FSDP2 or DDP, or start again with --overwrite")
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        wanted = float(cfg.clip_grad or 0.0)
        given = ds_config.get("gradient_clipping", "auto")
        if given not in ("auto", None) and float(given) != wanted:
            raise ValueError(f"the DeepSpeed config sets gradient_clipping {given} but --clip-grad is {cfg.clip_grad}: "
                             "the trainer's --clip-grad is what DeepSpeed uses; set gradient_clipping to auto")
        ds_config["gradient_clipping"] = wanted  # DeepSpeed (and Accelerate's 'auto') would clip at 1.0
        zero = ds_config.setdefault("zero_optimization", {})
        if zero.get("stage") == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True  # the final folder needs the full weights
    return engine


class Fsdp2ModelState:
    """The checkpoint view of an FSDP2 model: `state_dict()` names and global shapes for checks,
    `load_state_dict(full)` shards a full state dict into it."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        load_full_state_dict(self.model, state_dict)


class Fsdp2OptimizerState:
    """The checkpoint view of an FSDP2 model's optimizer, in a single process's layout (full tensors, parameters
    numbered in group order), so checkpoints do not depend on the number of processes. `state_dict()` is
    collective and returns the tensors on process 0 only."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def _names(self) -> list[str]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names[id(p)] for group in self.optimizer.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        osd = get_optimizer_state_dict(self.model, self.optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        index = {name: i for i, name in enumerate(self._names())}
        groups, start = [], 0
        for group in self.optimizer.param_groups:  # every process: the checks of a resume compare them
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(start, start + len(group["params"])))})
            start += len(group["params"])
        return {"state": {index[k]: v for k, v in osd.get("state", {}).items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = self._names()
        osd = {"state": {names[int(i)]: v for i, v in state_dict["state"].items()},
               "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                                for g in state_dict["param_groups"]]}
        set_optimizer_state_dict(self.model, self.optimizer, optim_state_dict=osd,
                                 options=StateDictOptions(full_state_dict=True))
