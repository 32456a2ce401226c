"""`--attention auto` (kernels/auto.py): each call shape is timed once on every candidate, its
winner kept in the per-architecture table and read back by later runs; outputs equal PyTorch's
SDPA (fp32, within 1e-5: the Triton kernel's own bound in test_attention.py). On a CPU the
candidates are PyTorch's SDPA and our kernel under the interpreter; `generate --attention auto`
on a CPU is PyTorch's SDPA (the one backend there), pixel for pixel."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from t2i_engine.kernels import auto, install
from tests.engine.test_generate import shard_pixels

pytestmark = pytest.mark.fresh_stack  # the Triton interpreter's loops: see tests/conftest.py

CANDIDATES = ("sdpa", "triton")  # what a CPU under the interpreter can time against each other
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU runs the kernel through the interpreter


def _qkv(b, h, lq, lk, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g).to(DEVICE) for n in (lq, lk, lk))


def test_each_shape_is_timed_once_and_its_fastest_candidate_kept(tmp_path):
    table = auto.AutoTable(tmp_path / "sm_test.json")
    mode = auto.AutoAttention(table, CANDIDATES)
    self_attn, cross_attn = _qkv(1, 2, 16, 16, 8), _qkv(1, 2, 16, 5, 8, seed=1)
    with mode:
        outs = [F.scaled_dot_product_attention(*qkv) for qkv in (self_attn, cross_attn, self_attn, cross_attn)]
    for out, qkv in zip(outs, (self_attn, cross_attn) * 2):
        torch.testing.assert_close(out, F.scaled_dot_product_attention(*qkv), rtol=0, atol=1e-5)
    assert len(mode.measured) == 2 and sum(mode.calls.values()) == 4 and not mode.fallbacks
    saved = json.loads((tmp_path / "sm_test.json").read_text())
    assert saved["versions"] == auto.table_versions()
    for key, winner in mode.measured.items():
        entry = saved["entries"][key]
        assert set(entry["ms"]) == set(CANDIDATES) and entry["winner"] == winner == min(
            entry["ms"], key=entry["ms"].get
        )
    assert auto.call_key(*cross_attn) in saved["entries"] and "Lk5" in auto.call_key(*cross_attn)

    again = auto.AutoAttention(auto.AutoTable(tmp_path / "sm_test.json"), CANDIDATES)  # a later run
    with again:
        F.scaled_dot_product_attention(*self_attn)
    assert again.measured == {} and again.chosen == {
        auto.call_key(*self_attn): mode.measured[auto.call_key(*self_attn)]
    }


def test_a_shape_runs_on_the_winner_the_table_names(tmp_path):
    table = auto.AutoTable(tmp_path / "t.json")
    q, k, v = _qkv(2, 2, 8, 8, 16)
    table.record(auto.call_key(q, k, v), {"triton": 1.0, "sdpa": 2.0})
    mode = auto.AutoAttention(table, CANDIDATES)
    with mode:
        out = F.scaled_dot_product_attention(q, k, v)
        F.scaled_dot_product_attention(q, k, v, is_causal=True)  # no candidate is asked: PyTorch's own SDPA
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-5)
    assert mode.calls == {"triton": 1} and mode.measured == {} and not mode.fallbacks
    record = mode.record()
    assert record["calls_by_backend"] == {"triton": 1} and record["choices"] == {auto.call_key(q, k, v): "triton"}

    wide = _qkv(1, 1, 4, 4, 264)  # a head dim our kernel refuses, yet the table names it: timed again
    table.record(auto.call_key(*wide), {"triton": 1.0})
    with mode:
        out = F.scaled_dot_product_attention(*wide)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(*wide), rtol=0, atol=1e-5)
    entry = auto.AutoTable(tmp_path / "t.json").entries[auto.call_key(*wide)]
    assert entry["winner"] == "sdpa" and "head dim" in entry["refused"]["triton"]


def test_a_table_from_other_versions_or_damaged_is_measured_again(tmp_path, caplog):
    path = tmp_path / "t.json"
    auto.AutoTable(path).record("some shape", {"sdpa": 1.0})
    assert auto.AutoTable(path).winner("some shape") == "sdpa"
    assert auto.AutoTable(path, versions={"torch": "0.1"}).winner("some shape") is None  # other kernels
    path.write_text("{not json")
    assert auto.AutoTable(path).entries == {} and "unreadable" in caplog.text
    with pytest.raises(ValueError, match="no candidate"):
        auto.AutoTable(path).record("refused everywhere", {}, {"sdpa": "head dim"})


def _record_many(path, worker: int) -> None:
    table = auto.AutoTable(path)
    for i in range(20):
        table.record(f"worker {worker} shape {i}", {"sdpa": 1.0})


def test_tables_written_by_several_workers_at_once_keep_every_shape(tmp_path):
    import multiprocessing

    path = tmp_path / "t.json"
    first, second = auto.AutoTable(path), auto.AutoTable(path)  # two runs, both started before either wrote
    first.record("shape a", {"sdpa": 1.0})
    second.record("shape b", {"triton": 1.0})
    assert set(auto.AutoTable(path).entries) == {"shape a", "shape b"}
    workers = [multiprocessing.get_context("fork").Process(target=_record_many, args=(path, w)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert len(auto.AutoTable(path).entries) == 2 + 3 * 20  # none lost to a writer racing another
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t.json.lock"]  # no temporary left


def test_install_routes_a_module_and_sdpa_takes_it_out(tmp_path):
    from t2i_engine.models.tiny import build_tiny_sd

    unet = build_tiny_sd().unet
    assert auto.install(unet, torch.device("cpu")) is None and "forward" not in unet.__dict__  # a CPU: one backend
    table = auto.AutoTable(tmp_path / "t.json")
    mode = auto.install(unet, torch.device("cpu"), candidates=("sdpa",), table=table)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 77, 32, generator=g)
    routed = unet(x, torch.tensor([500]), encoder_hidden_states=text).sample
    assert mode.calls["sdpa"] > 0 and set(table.entries) == set(mode.measured)
    install(unet, attention="sdpa")
    assert "forward" not in unet.__dict__
    torch.testing.assert_close(routed, unet(x, torch.tensor([500]), encoder_hidden_states=text).sample)


def test_generate_with_auto_on_a_cpu_is_sdpa_and_is_recorded(tmp_path):
    from t2i_engine.engine.run import RunOptions, generate
    from t2i_engine.engine.verify import verify_dataset
    from t2i_engine.errors import InputError
    from tests.conftest import tiny_recipe

    recipe = tiny_recipe(classes=["cat"], images_per_class=1, steps=1, resolution=16, format="png", guidance=1.0)
    pixels, flops = {}, {}
    for attention in ("sdpa", "auto"):
        summary = generate(recipe, tmp_path / attention, RunOptions(device="cpu", progress=False, attention=attention))
        flops[attention] = summary["denoiser_flops_per_image"]
        assert verify_dataset(tmp_path / attention) == []
        assert json.loads((tmp_path / attention / "dataset.json").read_text())["attention"] == attention
        pixels[attention] = shard_pixels(tmp_path / attention)
    assert pixels["sdpa"].keys() == pixels["auto"].keys() and all(
        (pixels["sdpa"][k] == pixels["auto"][k]).all() for k in pixels["sdpa"]
    )
    assert isinstance(flops["auto"], float) and flops["auto"] == flops["sdpa"]  # plain SDPA: every FLOP seen
    with pytest.raises(InputError, match="attention 'auto'"):  # one dataset, one attention
        generate(recipe, tmp_path / "auto", RunOptions(device="cpu", progress=False, attention="sdpa"))


def test_the_choice_stays_whole_in_a_compiled_graph(tmp_path):
    """fullgraph compile (Dynamo's eager backend: the same graph, no code generated) keeps the auto
    op in one graph per compiled method; the op still chooses and counts when the graph runs."""
    from t2i_engine.export import tuning
    from t2i_engine.models.tiny import build_tiny_sd

    pipe = build_tiny_sd()
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    mode = auto.install(pipe, torch.device("cpu"), candidates=("sdpa",), table=auto.AutoTable(tmp_path / "t.json"))
    with torch.no_grad():
        reference = pipe.unet(x, torch.tensor([500]), encoder_hidden_states=text).sample  # eager, routed
        per_forward = mode.calls["sdpa"]
        tuning.compile_pipeline(pipe, "default", backend="eager")  # fullgraph: a graph break raises
        before = tuning.compiled_graphs()
        outs = [pipe.unet(x, torch.tensor([500]), encoder_hidden_states=text).sample for _ in range(2)]
    assert tuning.compiled_graphs() - before == 1  # the UNet's forward, once: no recompile
    assert per_forward > 0 and mode.calls == {"sdpa": 3 * per_forward}  # every call went through the op
    for out in outs:
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    tuning.uncompile(pipe)
    q, k, v = _qkv(1, 2, 8, 5, 8)
    torch.library.opcheck(torch.ops.t2i_engine.auto_attention.default, (q, k, v, None, None, False, mode.number))


def test_bench_attention_records_feed_the_table_under_the_engines_key(tmp_path):
    """bench/attention.py's timings become entries under the key a real call of that shape makes."""
    import sys

    from tests.conftest import ROOT

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import attention as bench_attention
    finally:
        sys.path.remove(str(ROOT / "bench"))
    table = auto.AutoTable(tmp_path / "t.json")
    row = {"B": 4, "H": 8, "Hkv": 8, "Lq": 64, "Lk": 77, "D": 40}
    row["paths"] = {
        "sdpa_default": {"ms": 0.5},  # PyTorch's own pick is one of the forced three: not a candidate
        "flash": {"ms": 0.3},
        "efficient": {"ms": 0.4},
        "cudnn": {"error": "RuntimeError: no"},
        "triton": {"ms": 0.2},
    }
    assert bench_attention.feed_table(table, row) == "triton"
    q = torch.empty(4, 77, 8 * 40, dtype=torch.bfloat16).view(4, 77, 8, 40).transpose(1, 2)
    call = torch.empty(4, 64, 8, 40, dtype=torch.bfloat16).transpose(1, 2)
    entry = auto.AutoTable(tmp_path / "t.json").entries[auto.call_key(call, q, q)]
    assert entry["winner"] == "triton" and set(entry["ms"]) == {"flash", "efficient", "triton"}
    assert entry["refused"] == {"cudnn": "RuntimeError: no"}
    # a shape whose timing the budget cut short is left to the engine: a partial winner would stand
    row.update(Lq=128, paths={**row["paths"], "cudnn": {"skipped": "--budget-s spent"}})
    assert bench_attention.feed_table(table, row) is None and len(auto.AutoTable(tmp_path / "t.json").entries) == 1
