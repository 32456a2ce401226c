"""The work of sampling.py's feature caches: DeepCache on a UNet (ours: no maintained library
does it for current diffusers) and diffusers' own transformer caches (first-block, pyramid
attention broadcast), each installed for one pipeline call (`with feature_cache(pipe, setting)`)
so that no state crosses from one batch to the next."""

from __future__ import annotations

import contextlib

import torch

from ..models.pipelines import denoiser


class DeepCache:
    """DeepCache (Ma, Fang, Wang, CVPR 2024) on a diffusers UNet2DConditionModel: every
    `interval`-th denoiser call runs whole and keeps what the deep branch (down blocks after the
    first, the mid block, up blocks before the last) returned; the calls in between run the time
    embedding, conv_in, the first down block, the last up block and the output convolutions,
    with the deep blocks answering from that keep. The UNet's own forward runs throughout (the
    deep blocks' forwards are swapped for the call), so every conditioning it takes (SDXL's
    added embeddings, attention masks) works as before. With interval 1 nothing is reused.

    A call whose batch is half the kept one (a guidance interval passing only the positive half
    of a CFG batch) reuses the kept positive half; any other change of batch runs whole."""

    def __init__(self, pipe, interval: int):
        self.unet, self.interval = denoiser(pipe), interval
        self.deep = [*self.unet.down_blocks[1:], self.unet.mid_block, *self.unet.up_blocks[:-1]]
        self.deep = [m for m in self.deep if m is not None]
        self.kept: dict[int, object] = {}
        self.calls = self.reused = 0
        self._handles: list = []
        self._swapped: list = []

    def _pre(self, module, args, kwargs):
        x = args[0] if args else kwargs["sample"]
        kept = self._kept_batch()
        whole = self.calls % self.interval == 0 or kept not in (x.shape[0], 2 * x.shape[0])
        self.calls += 1
        if whole:
            self.kept = {}
            self._handles += [m.register_forward_hook(self._keep) for m in self.deep]
            return
        self.reused += 1
        half = kept != x.shape[0]
        for m in self.deep:
            answer = _positive_half(self.kept[id(m)]) if half else self.kept[id(m)]
            self._swapped.append((m, m.__dict__.get("forward")))
            m.forward = lambda *a, _answer=answer, **k: _answer

    def _post(self, module, args, kwargs, output):
        for handle in self._handles:
            handle.remove()
        for m, own in self._swapped:
            if own is None:
                del m.forward
            else:
                m.forward = own
        self._handles, self._swapped = [], []

    def _keep(self, module, args, output):
        self.kept[id(module)] = output

    def _kept_batch(self) -> int | None:
        if not self.kept:
            return None
        first = next(iter(self.kept.values()))
        return (first[0] if isinstance(first, tuple) else first).shape[0]

    def __enter__(self):
        self.kept, self.calls, self.reused = {}, 0, 0
        self._unet_handles = [
            self.unet.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.unet.register_forward_hook(self._post, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc):
        self._post(None, None, None, None)
        for handle in self._unet_handles:
            handle.remove()
        self.kept = {}


def _positive_half(value):
    if torch.is_tensor(value):
        return value[value.shape[0] // 2 :]
    return tuple(_positive_half(v) for v in value)


@contextlib.contextmanager
def diffusers_cache(pipe, setting: dict):
    """diffusers' transformer cache on the denoiser for one pipeline call (the pipeline resets
    its state at the end of each call; disabling it restores the blocks)."""
    import diffusers

    module = denoiser(pipe)
    if setting["name"] == "first-block":
        config = diffusers.FirstBlockCacheConfig(threshold=setting["threshold"])
    else:
        config = diffusers.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=setting["skip"],
            current_timestep_callback=lambda: pipe.current_timestep,
        )
    module.enable_cache(config)
    try:
        yield
    finally:
        module.disable_cache()


def feature_cache(pipe, setting: dict | None):
    """The context that installs `setting` (sampling.check_cache's) on `pipe` for one call."""
    if setting is None:
        return contextlib.nullcontext()
    if setting["name"] == "deepcache":
        return DeepCache(pipe, setting["interval"])
    return diffusers_cache(pipe, setting)
