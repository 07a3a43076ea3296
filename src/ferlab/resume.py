"""Continue an interrupted run: the state after each finished epoch, saved without pickle (safetensors and JSON).

`save_state` writes resume.safetensors (model weights, AdamW moments, random-number-generator
states) and resume.json (the epoch history and counters, the optimiser's settings);
`load_state` reads them back so that `fit` continues where the run stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ferlab.models import FerNet
from ferlab.train import EpochRecord, TrainState

__all__ = ["load_state", "save_state"]


def save_state(
    folder: Path, model: FerNet, optimizer: torch.optim.Optimizer | None, state: TrainState,
    generator: torch.Generator,
) -> None:
    """resume.safetensors (model, optimiser moments, RNG states) + resume.json (the rest)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optimizer_dict: dict[str, Any] = (
        optimizer.state_dict() if optimizer is not None else {"state": {}, "param_groups": []}
    )
    for param_id, slots in optimizer_dict["state"].items():
        for slot, value in slots.items():
            tensors[f"optimizer.{param_id}.{slot}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
        for group in optimizer_dict["param_groups"]
    ]
    save_file(tensors, str(folder / "resume.safetensors.tmp"))
    (folder / "resume.safetensors.tmp").replace(folder / "resume.safetensors")
    raw = asdict(state)
    raw["param_groups"] = groups
    (folder / "resume.json").write_text(json.dumps(raw, indent=1))


def load_state(
    folder: Path, model: FerNet
) -> tuple[TrainState, dict[str, Any] | None, torch.Tensor]:
    """Restore the model in place; return (state, optimizer state dict, generator state)."""
    tensors = load_file(str(folder / "resume.safetensors"))
    raw = json.loads((folder / "resume.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param_id, slot = key.split(".", 2)
            optimizer_state.setdefault(int(param_id), {})[slot] = value
    groups = [
        {k: (tuple(v) if k == "betas" else v) for k, v in group.items()}
        for group in raw.pop("param_groups")
    ]
    torch.set_rng_state(tensors["rng.torch"])
    raw["history"] = [EpochRecord(**row) for row in raw["history"]]
    state = TrainState(**raw)
    optimizer = {"state": optimizer_state, "param_groups": groups} if groups else None
    return state, optimizer, tensors["rng.generator"]
