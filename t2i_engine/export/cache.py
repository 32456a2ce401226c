"""The artifact cache: built components, keyed by everything that makes them what they are.

The key covers the component's weights (a hash of its tensors), the backend and precision, the
shape profile, the GPU architecture (or "cpu") and the versions of the libraries that built it;
any change is a different key, so a new build. An artifact is built in a hidden temporary folder
beside its final one and renamed into place with its meta.json already inside: a folder under
its final name is complete, and an interrupted build leaves nothing under it (its temporary
folder is removed on any exception; after a kill -9 it stays hidden and is swept by the next
build). Root: $T2I_ENGINE_CACHE, else $XDG_CACHE_HOME/t2i-engine/artifacts (~/.cache/...).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import torch

from ..files import cache_root, fsync_dir

META = "meta.json"
FORMAT = 1  # bump when what a build writes changes


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer: name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def library_versions(backend: str) -> dict[str, str]:
    import importlib.metadata as md

    names = ["torch", "diffusers"] + {
        "onnx": ["onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript"],
        "tensorrt": ["onnx", "tensorrt"],
        "compile": ["triton"],
    }.get(backend, [])
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def artifact_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **fields}, sort_keys=True).encode()).hexdigest()[:20]


class ArtifactCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_root()

    def folder(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def lookup(self, name: str, key: str) -> Path | None:
        folder = self.folder(name, key)
        return folder if (folder / META).is_file() else None

    def build(self, name: str, key: str, fields: dict, make) -> tuple[Path, bool]:
        """The artifact's folder and whether it was built now: `make(tmp_folder)` writes the
        artifact (returning extra meta), unless a complete one is already there."""
        found = self.lookup(name, key)
        if found:
            return found, False
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()
        final = self.folder(name, key)
        if final.is_dir():  # under the final name without meta.json: not ours (we rename complete folders)
            shutil.rmtree(final)
        tmp = self.root / f".tmp-{name}-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            start = time.perf_counter()
            extra = make(tmp) or {}
            meta = {
                "name": name,
                "key": key,
                **fields,
                **extra,
                "build_seconds": round(time.perf_counter() - start, 2),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb+") as fh:
                        os.fsync(fh.fileno())
            try:
                os.rename(tmp, final)
            except OSError:  # someone else finished the same build first: theirs stands
                if not self.lookup(name, key):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return final, False
            fsync_dir(self.root)
            return final, True
        except BaseException:  # KeyboardInterrupt included: nothing half-written stays
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def entries(self) -> list[dict]:
        out = []
        if not self.root.is_dir():
            return out
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not (folder / META).is_file():
                continue
            meta = json.loads((folder / META).read_text())
            meta["path"] = str(folder)
            meta["bytes"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            out.append(meta)
        return out

    def _sweep(self) -> None:
        """Temporary folders left by killed builds (their process is gone; a cache shared by
        several machines would need host names in these folders' names too)."""
        for tmp in self.root.glob(".tmp-*"):
            pid = tmp.name.split("-")[-2]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
