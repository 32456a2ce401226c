"""Feature extractors for set-level measurements, from local weights only.

`--features` takes one of:
    judge                       the embedded digits judge's penultimate layer (ships in the package)
    clip=DIR                    CLIP image embeddings (the paper: ViT-B/32), a transformers folder
    inception=FILE              the FID Inception-v3 (torch-fidelity's pt_inception-2015-12-05 weights)
    timm:NAME=FILE              any timm model's pooled features, weights from a local file
    torchvision:NAME=FILE       any torchvision model's penultimate features, local weights
Nothing is downloaded: a missing file is an input error that says which file is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..training.digits_judge import load_judge
from ..training.presets import IMAGENET_MEAN, IMAGENET_STD

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
CLIP_HINT = (
    "a folder holding CLIP weights in transformers' layout (config.json, model.safetensors, tokenizer files), "
    "e.g. `hf download openai/clip-vit-base-patch32 --local-dir DIR` on a machine with a hub connection"
)
INCEPTION_HINT = (
    "torch-fidelity's FID Inception file pt_inception-2015-12-05-6726825d.pth (from "
    "github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth)"
)
SPEC_HINT = "expected judge, clip=DIR, inception=FILE, timm:NAME=FILE or torchvision:NAME=FILE"


@dataclass
class Extractor:
    name: str
    model: torch.nn.Module
    size: int  # square input size
    mean: tuple | None  # None: the model takes uint8 pixels
    std: tuple | None
    kind: str  # "judge" | "clip" | "inception" | "backbone"

    def to_tensor(self, images: list[Image.Image]) -> torch.Tensor:
        return self.normalise(self.prepare(images))

    def prepare(self, images: list[Image.Image]) -> np.ndarray:
        """uint8 [N, size, size, 3], resized and cropped: the CPU's half (a decoding thread may run it)."""
        return np.stack([np.asarray(_resize_crop(im.convert("RGB"), self.size)) for im in images])

    def normalise(self, pixels: np.ndarray) -> torch.Tensor:
        """Prepared pixels as the model's input [N, 3, size, size]."""
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        if self.mean is None:
            return x  # uint8
        x = x.float() / 255
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        x = self.to_tensor(images).to(next(self.model.parameters()).device)
        if self.kind == "clip":
            feats = as_tensor(self.model.get_image_features(pixel_values=x))
        elif self.kind == "judge":
            feats = self.model.embed(x)
        else:
            feats = self.model(x)
        return feats.float().flatten(1).cpu()


def _resize_crop(im: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size` (bicubic), then the centre square: CLIP's and ImageNet's way."""
    if im.size == (size, size):
        return im
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return im.crop((left, top, left + size, top + size))


def as_tensor(out) -> torch.Tensor:
    """CLIP's features as a tensor: transformers 5 may return a model output instead."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_extractor(spec: str, field: str = "--features", device: str = "cpu") -> Extractor:
    name, _, path = spec.partition("=")
    if name == "judge" and not path:
        # The judge normalises inside and takes [0, 1] pixels at 32 px.
        return Extractor("judge", load_judge().to(device), 32, (0, 0, 0), (1, 1, 1), "judge")
    if not path:
        raise InputError(field, spec, SPEC_HINT)
    if name == "clip":
        return Extractor(
            f"clip={path}", load_clip(path, field).to(device), _clip_size(path), CLIP_MEAN, CLIP_STD, "clip"
        )
    if name == "inception":
        return Extractor("inception", _load_inception(path, field).to(device), 299, None, None, "inception")
    if name.startswith(("timm:", "torchvision:")):
        lib, _, arch = name.partition(":")
        model = _load_backbone(lib, arch, path, field, spec)
        return Extractor(name, model.to(device).eval(), 224, IMAGENET_MEAN, IMAGENET_STD, "backbone")
    raise InputError(field, spec, SPEC_HINT)


def load_clip(path: str, field: str = "--clip"):
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise InputError(field, path, f"expected {CLIP_HINT}")
    from transformers import CLIPModel

    try:
        return CLIPModel.from_pretrained(folder).eval()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(
            field, path, f"cannot load CLIP from it ({type(e).__name__}: {str(e)[:120]}); expected {CLIP_HINT}"
        ) from None


def _clip_size(path: str) -> int:
    import json

    config = json.loads((Path(path) / "config.json").read_text())
    return config.get("vision_config", {}).get("image_size", 224)


@torch.inference_mode()
def clip_text_features(model, tokenizer, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        tok = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, return_tensors="pt").to(device)
        out.append(as_tensor(model.get_text_features(**tok)).float().cpu())
    return torch.cat(out)


def load_clip_tokenizer(path: str, field: str = "--clip"):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        raise InputError(field, path, f"expected {CLIP_HINT}; its tokenizer files are missing") from None


def _load_inception(path: str, field: str):
    if not Path(path).is_file():
        raise InputError(field, path, f"expected {INCEPTION_HINT}")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        return NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=path
        )
    except (ImportError, ModuleNotFoundError):
        raise InputError(
            field, path, "the Inception extractor needs torch-fidelity: pip install 't2i-engine[eval]'"
        ) from None
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        raise InputError(field, path, f"cannot load it ({type(e).__name__}); expected {INCEPTION_HINT}") from None


def _load_backbone(lib: str, arch: str, path: str, field: str, spec: str) -> torch.nn.Module:
    if not Path(path).is_file():
        raise InputError(
            field, spec, f"expected a local weights file for {lib} model {arch} (.safetensors, .pth or .pt)"
        )
    state = _read_state_dict(path)
    if lib == "timm":
        import timm

        if not timm.is_model(arch):
            raise InputError(field, spec, "expected a timm model name (timm.list_models())")
        model = timm.create_model(arch, pretrained=False)
        _load_into(model, state, field, spec)
        model.reset_classifier(0)  # pooled features
        return model
    import torchvision

    if arch not in torchvision.models.list_models():
        raise InputError(field, spec, "expected a torchvision model name (torchvision.models.list_models())")
    model = torchvision.models.get_model(arch, weights=None)
    _load_into(model, state, field, spec)
    for attr in ("fc", "heads", "head"):
        if isinstance(getattr(model, attr, None), torch.nn.Module):
            setattr(model, attr, torch.nn.Identity())
            return model
    if isinstance(getattr(model, "classifier", None), torch.nn.Sequential):
        model.classifier[-1] = torch.nn.Identity()
        return model
    raise InputError(field, spec, "cannot find this torchvision model's classifier layer; use timm:NAME=FILE")


def _read_state_dict(path: str) -> dict:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same input error
        raise InputError(
            "--features",
            path,
            f"cannot read weights from it ({type(e).__name__}); expected a .safetensors or a torch state-dict file",
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise InputError("--features", path, "expected a state dict (parameter name -> tensor)")
    return state


def _load_into(model: torch.nn.Module, state: dict, field: str, spec: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(
            field, spec, f"the weights do not fit this architecture ({str(e).splitlines()[0][:120]})"
        ) from None
