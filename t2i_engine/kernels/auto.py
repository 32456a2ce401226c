"""`--attention auto`: each attention call runs on the backend measured fastest for its shape on
this GPU architecture: `install(pipeline_or_model, device)`, undone by routing.install(..., "sdpa").

No backend wins everywhere: on a Hopper card cuDNN tends to win long self-attention, flash the
short cross-attention over 77 text tokens, and our Triton kernel may win head dims the libraries
pad. So the first call of each shape (batch, heads, key/value heads, lengths, head dims, dtype,
mask) times every candidate that takes it (PyTorch's flash, efficient and cuDNN SDPA backends,
and our Triton kernel where `attention.supports` it) on the call's own tensors, and the fastest
answers that call and every later one of that shape. The timings are kept in a table per GPU
architecture (`<artifact cache>/attention-auto/sm_90.json`), written atomically and merged with
what is already there, so a later run (or another worker) reads the choice instead of timing
again; bench/attention.py writes the same table. A table made with other versions of torch,
triton or cuDNN is ignored (their kernels changed), and re-measured.

Under torch.compile the choice is a custom op (`t2i_engine::auto_attention`), kept whole in the
graph: the graph runs it, and the op times, reads the table and dispatches when it runs, as in
eager (under CUDA graphs, only while the graph is first recorded: a replay repeats the kernels
then chosen, and `calls` counts no replay).

On a CPU there is one backend, PyTorch's own SDPA, and `auto` is that: nothing is installed.
Calls with dropout or a causal flag (none in a diffusers text-to-image model at inference) stay
with PyTorch's SDPA; a shape no candidate takes goes to PyTorch's default, counted in `fallbacks`.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import math
import time
import weakref
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..devices import device_arch
from ..files import atomic_write_text, cache_root
from .fused_norm import unfuse
from .routing import METHODS, _Routed, modules_of, unwrap
from .sdpa import BACKENDS, unpin
from .triton_env import interpreting

log = logging.getLogger(__name__)
TABLE_FORMAT = 1
CANDIDATES = ("flash", "efficient", "cudnn", "triton")  # "sdpa" (PyTorch's own pick) may be named in tests
WARMUP, ROUNDS, REPS = 2, 3, 3  # per candidate: the first calls compile/autotune; best round of REPS calls
ROUND_S, MAX_REPS = 1e-3, 200  # on a GPU a round lasts at least ROUND_S (at most MAX_REPS calls)


def shape_key(b, h, hkv, lq, lk, d, dv, dtype: torch.dtype, mask: str = "none", layout: str = "bshd") -> str:
    return f"B{b} H{h} Hkv{hkv} Lq{lq} Lk{lk} D{d} Dv{dv} {str(dtype).removeprefix('torch.')} mask={mask} {layout}"


def layout_of(q: torch.Tensor) -> str:
    """bshd: heads within each token's row, as diffusers' projections view them ([B, S, H*D] seen
    as [B, H, S, D]); bhsd: each head's tokens together (contiguous [B, H, S, D]). Backends read
    the two at different speeds, and a compiled graph may hand over either."""
    return "bshd" if q.stride(1) < q.stride(2) else "bhsd"


def call_key(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> str:
    """What decides which backend is fastest for a call: its shapes, dtype, mask and layout."""
    b, h, lq, d = q.shape
    masked = "none" if mask is None else f"{str(mask.dtype).removeprefix('torch.')}{list(mask.shape)}"
    return shape_key(b, h, k.shape[1], lq, k.shape[2], d, v.shape[-1], q.dtype, masked.replace(" ", ""), layout_of(q))


def table_versions() -> dict[str, str]:
    """What a measurement depends on besides the card: the libraries whose kernels were timed, and
    our own kernel's source (an edit to it may change who wins)."""
    kernel = Path(__file__).with_name("attention.py").read_bytes()
    out = {"torch": torch.__version__, "attention.py": hashlib.sha256(kernel).hexdigest()[:16]}
    try:
        out["triton"] = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        pass
    if torch.backends.cudnn.is_available():
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def table_path(device: torch.device) -> Path:
    return cache_root() / "attention-auto" / f"{device_arch(device)}.json"


class AutoTable:
    """The measured winners of one GPU architecture: key -> {"winner", "ms" per candidate, ...}."""

    def __init__(self, path: Path, versions: dict[str, str] | None = None, device_name: str = ""):
        self.path, self.device_name = Path(path), device_name
        self.versions = table_versions() if versions is None else versions
        self.entries: dict[str, dict] = self._read()

    @classmethod
    def for_device(cls, device: torch.device, path: Path | None = None) -> AutoTable:
        """The engine's table for `device` (or the one at `path`), for this card."""
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        return cls(path or table_path(device), device_name=name)

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:  # a damaged table costs a re-measure, never a failed run
            log.warning("auto attention: ignoring the unreadable table %s (%s)", self.path, e)
            return {}
        if data.get("format") != TABLE_FORMAT or data.get("versions") != self.versions:
            log.info("auto attention: %s was measured with %s; measuring again", self.path, data.get("versions"))
            return {}
        if self.device_name and data.get("device") not in ("", self.device_name):  # sm_90: H100 or H200
            log.info("auto attention: %s was measured on %s; measuring again", self.path, data.get("device"))
            return {}
        return dict(data.get("entries", {}))

    def winner(self, key: str) -> str | None:
        entry = self.entries.get(key)
        return entry["winner"] if entry else None

    def record(self, key: str, ms: dict[str, float], refused: dict[str, str] | None = None, source: str = "") -> str:
        """Keep one shape's timings (milliseconds per call, by candidate) and return the fastest."""
        if not ms:
            raise ValueError(f"no candidate ran {key}: {refused}")
        winner = min(ms, key=ms.get)
        self.entries[key] = {
            "winner": winner,
            "ms": {name: round(t, 5) for name, t in ms.items()},
            "refused": dict(refused or {}),
            "source": source,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.save()
        return winner

    def save(self) -> None:
        """Merged with what is on disk (another worker's shapes stay) and written atomically, under
        a lock that the other workers of this machine take too (so one writer at a time uses the
        temporary file). A table that cannot be written costs later runs a re-measure, never this run."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                merged = {**self._read(), **self.entries}
                text = json.dumps(
                    {"format": TABLE_FORMAT, "device": self.device_name, "versions": self.versions, "entries": merged},
                    indent=1,
                    sort_keys=True,
                )
                atomic_write_text(self.path, text + "\n")
        except OSError as e:
            log.warning("auto attention: could not write %s (%s); the choices stay in this run only", self.path, e)


def run_backend(name: str, q, k, v, mask=None, scale=None, enable_gqa=False) -> torch.Tensor:
    """One attention call on one backend: "triton" (ours), "sdpa" (PyTorch's own pick), or one of
    PyTorch's SDPA backends forced alone (it raises where it cannot take the call)."""
    if name == "triton":
        from .attention import flash_attention  # heavy: triton

        return flash_attention(q, k, v, scale=scale, mask=mask)
    kwargs = {"attn_mask": mask, "scale": scale}
    if enable_gqa:
        kwargs["enable_gqa"] = True
    if name == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([BACKENDS[name]]):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def seconds_per_call(fn, device: torch.device) -> float:
    """Best of ROUNDS rounds after WARMUP calls (the first compiles and autotunes our kernel). On a
    GPU: CUDA events on `device`'s stream, each round at least ROUND_S of calls, so a kernel of
    tens of microseconds (cross-attention over 77 tokens) is not timed as one launch's overhead."""
    if device.type != "cuda":
        for _ in range(WARMUP):
            fn()
        rounds = []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            for _ in range(REPS):
                fn()
            rounds.append((time.perf_counter() - t) / REPS)
        return min(rounds)
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device)

        def timed(reps: int) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            for _ in range(reps):
                fn()
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end) / 1000 / reps

        fn()  # compiles, autotunes: not timed
        reps = max(REPS, min(MAX_REPS, math.ceil(ROUND_S / max(timed(WARMUP), 1e-7))))
        return min(timed(reps) for _ in range(ROUNDS))


def default_candidates(device: torch.device) -> tuple[str, ...]:
    """Every backend that can run on `device`: none besides PyTorch's own on a CPU."""
    if device.type != "cuda":
        return ()
    triton = importlib.util.find_spec("triton") is not None
    return tuple(c for c in CANDIDATES if c != "triton" or triton)


_MODES: weakref.WeakValueDictionary[int, AutoAttention] = weakref.WeakValueDictionary()
_NUMBERS = itertools.count()


def _sdpa_arguments(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """(q, k, v, mask, scale, enable_gqa) of a call the candidates can take, else None: dropout and
    causal calls stay with PyTorch (no diffusers text-to-image model makes them at inference)."""
    if dropout_p or is_causal or query.dim() != 4 or key.dim() != 4:
        return None
    return query, key, value, attn_mask, scale, enable_gqa


@torch.library.custom_op("t2i_engine::auto_attention", mutates_args=())
def auto_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
    enable_gqa: bool,
    mode: int,
) -> torch.Tensor:
    """`--attention auto`'s call as a PyTorch operator: torch.compile keeps it whole in the graph
    (its shape from the fake below) and the choosing runs when the graph runs. Contiguous out,
    whatever the backend's layout, so the graph's assumption about it always holds."""
    return _MODES[mode].attention(q, k, v, mask, scale, enable_gqa).contiguous()


@auto_attention.register_fake
def _auto_attention_fake(q, k, v, mask, scale, enable_gqa, mode):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


class AutoAttention(TorchFunctionMode):
    """Routes each scaled_dot_product_attention call to its shape's winner. Counts calls by the
    backend that ran them (`calls`), what it timed this run (`measured`: key -> winner) and what
    went to PyTorch's default dispatch (`fallbacks`, by reason)."""

    def __init__(self, table: AutoTable, candidates: tuple[str, ...]):
        super().__init__()
        self.table, self.candidates = table, tuple(candidates)
        self.depth = 0  # routed methods running (routing._Routed enters the mode once, however nested)
        self.number = next(_NUMBERS)  # how the op finds this mode (an op takes tensors and numbers)
        _MODES[self.number] = self
        self.chosen: dict[str, str] = {}
        self.measured: dict[str, str] = {}
        self.calls: Counter = Counter()
        self.fallbacks: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # Kept this small on purpose: torch.compile traces it for every torch function the model
        # calls. The choosing (and timing) happens inside the op, at run time, outside the graph.
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            call = _sdpa_arguments(*args, **kwargs)
            if call is not None:
                return torch.ops.t2i_engine.auto_attention(*call, self.number)
        return func(*args, **kwargs)

    def attention(self, query, key, value, attn_mask, scale, enable_gqa) -> torch.Tensor:
        """One call on its shape's winner (timed first if no run has timed that shape)."""
        name = call_key(query, key, value, attn_mask)
        args = (query, key, value, attn_mask, scale, enable_gqa)
        if name not in self.chosen:
            backend = self.table.winner(name)
            if query.is_cuda and torch.cuda.is_current_stream_capturing():
                # a CUDA graph being recorded (compile's max-autotune records after one plain run,
                # so only a shape first met here): nothing may be timed or synchronised; the
                # table's winner or PyTorch's own choice, for this call only
                backend = backend if backend in self.candidates else "sdpa"
                self.calls[backend] += 1
                return run_backend(backend, *args)
            if backend in self.candidates:  # timed before (bench/attention.py, or an earlier run)
                try:
                    out = run_backend(backend, *args)
                except torch.OutOfMemoryError:
                    raise  # not a refusal: the run is short of memory whichever backend runs
                except Exception as e:  # noqa: BLE001 - a refusal: SDPA raises RuntimeError, ours ValueError or Triton's own
                    log.warning("auto attention: %s refuses %s here (%s); timing again", backend, name, e)
                else:
                    self.chosen[name] = backend
                    self.calls[backend] += 1
                    return out
            try:
                self.chosen[name] = self._measure(name, *args)
            except torch.OutOfMemoryError:
                # timing needs room for a second output beside the first: this call runs on
                # PyTorch's own choice, nothing is recorded, and the next call tries again
                log.warning("auto attention: out of memory timing %s; PyTorch's default runs this call", name)
                torch.cuda.empty_cache()
                self.fallbacks["out of memory while timing"] += 1
                return run_backend("sdpa", *args)
        backend = self.chosen[name]
        if backend is None:
            self.fallbacks["no candidate takes it"] += 1
            backend = "sdpa"
        else:
            self.calls[backend] += 1
        return run_backend(backend, *args)

    def _measure(self, name, q, k, v, mask, scale, enable_gqa) -> str | None:
        ms, refused = {}, {}
        for candidate in self.candidates:
            why = self._refuses(candidate, q, k, v, mask, enable_gqa)
            if why is None:
                try:
                    ms[candidate] = 1e3 * seconds_per_call(
                        lambda c=candidate: run_backend(c, q, k, v, mask, scale, enable_gqa), q.device
                    )
                    continue
                except torch.OutOfMemoryError:
                    raise  # not the backend's refusal: nothing of this shape is recorded
                except Exception as e:  # noqa: BLE001 - a refusal: SDPA raises RuntimeError, Triton its own errors
                    text = str(e).strip()
                    why = f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__
            refused[candidate] = why
        if not ms:
            log.warning("auto attention: no candidate runs %s (%s); PyTorch's default takes it", name, refused)
            return None
        winner = self.table.record(name, ms, refused, source="generate")
        self.measured[name] = winner
        log.info("auto attention: %s -> %s (%s ms)", name, winner, ", ".join(f"{c} {t:.3f}" for c, t in ms.items()))
        return winner

    @staticmethod
    def _refuses(candidate, q, k, v, mask, enable_gqa) -> str | None:
        if k.shape[1] != q.shape[1] and not enable_gqa:
            return "different head counts without enable_gqa"
        if candidate == "triton":
            if q.device.type != "cuda" and not interpreting():
                return "Triton runs on CUDA"
            from .attention import supports  # heavy: triton

            return supports(q, k, v, mask)
        return None

    def record(self) -> dict:
        """What ran: for bench rows and logs."""
        return {
            "calls_by_backend": dict(self.calls),
            "choices": dict(self.chosen),
            "measured_this_run": len(self.measured),
            "fallbacks": dict(self.fallbacks),
            "table": str(self.table.path),
        }


def install(
    target, device: torch.device, candidates: tuple[str, ...] | None = None, table: AutoTable | None = None
) -> AutoAttention | None:
    """Route a pipeline's (or one module's) attention by measured shape. None where `device` has no
    backend to choose between (a CPU): PyTorch's SDPA runs as without the switch."""
    candidates = default_candidates(device) if candidates is None else tuple(candidates)
    modules = modules_of(target)
    unpin(target)
    for module in modules:  # whatever routed or pinned it before: attention alone is routed now
        unwrap(module, _Routed)
        unfuse(module)
    if not candidates:
        return None
    mode = AutoAttention(table or AutoTable.for_device(device), candidates)
    for module in modules:
        for method in METHODS:
            fn = getattr(module, method, None)
            if callable(fn):
                setattr(module, method, _Routed(fn, mode))
    return mode
