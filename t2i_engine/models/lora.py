"""LoRA adapters as a recipe names them: the file, its sha256, its scale (and the registry adapter
it is, if one). No torch here: recipes are checked before anything heavy loads; lora_fuse.py holds
them against a model and fuses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..files import file_sha256
from .registry import AdapterSpec

LORA_FAMILIES = ("sd", "sdxl", "sd3", "flux")  # diffusers' LoRA loaders for these pipelines


@dataclass(frozen=True)
class Adapter:
    """One adapter of a recipe: where it was read, what it holds, how strongly it applies, and the
    registry adapter it is, if one (provenance: the hash holds the bytes and the scale)."""

    path: str
    sha256: str
    scale: float = 1.0
    name: str | None = None

    def record(self) -> dict:
        """What a dataset records of it: the bytes and the scale, not where the file lay."""
        return {"sha256": self.sha256, "scale": self.scale}


def hub_adapter_file(spec: AdapterSpec) -> Path:
    """A registry adapter's file in the local Hugging Face cache (HF_HOME; nothing is downloaded)."""
    from huggingface_hub import hf_hub_download  # heavy: huggingface_hub (imports requests)

    try:
        return Path(hf_hub_download(spec.hub_id, spec.filename, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache, whatever the hub library says
        raise InputError(
            "lora",
            spec.name,
            f"its weights are not in the local Hugging Face cache; fetch them on a connected machine with "
            f"`hf download {spec.hub_id} {spec.filename}` (they land in the cache HF_HOME points to)",
        ) from None


def read_adapter(path: str | Path, scale: object = 1.0, field: str = "lora", name: str | None = None) -> Adapter:
    """An adapter file checked and hashed (an existing safetensors file; a finite scale)."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"{field}.scale", scale, "expected a finite number (1.0: the adapter as trained)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(field, str(path), "expected an existing LoRA file (.safetensors)")
    if p.suffix != ".safetensors":
        raise InputError(field, str(path), "only safetensors adapters are loaded (a pickle can run code)")
    return Adapter(str(p.resolve()), file_sha256(p), value, name)
