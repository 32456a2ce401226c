"""A bench result as a short table for the terminal and for bench/RESULTS.md."""

from __future__ import annotations


def table(result: dict) -> str:
    s = result["settings"]
    head = (
        f"{result['model']} {s['height']}x{s['width']}, {s['steps']} steps, guidance {s['guidance']} on "
        f"{result['device']['name']}"
        f" | weights: {result['weights'].split(':')[0]} | {result['flops']['per_image'] / 1e12:.4g} TFLOP/image,"
        f" {result['matmul']['dtype']} matmul {result['matmul']['flops_per_second'] / 1e12:.4g} TFLOP/s,"
        f" ceiling {result['ceiling_images_per_second']:.4g} images/s"
    )
    peak = result.get("published_peak")
    if peak:
        head += f" | published dense bf16 peak {peak['flops_per_second'] / 1e12:.4g} TFLOP/s ({peak['source']})"
    stored = result.get("bytes_per_image")
    if s.get("decoder", "vae") != "vae" or stored:  # results of before these keys print as they did
        head += f" | decoder {s.get('decoder', 'vae')}"
        if stored:
            h, w = stored["stored_size"]
            head += f", {stored['mean']:,.0f} bytes/image ({stored['format']} {h}x{w})"
    lines = [
        head,
        "",
        "| path | dtype | batch | images/s | median batch | MFU (measured matmul) | MFU (published peak) "
        "| forwards/image | peak GiB | GPU util % | W | PSNR vs first |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        config = f" [{r['config']}]" if "config" in r else ""
        if "error" in r:
            lines.append(f"| {r['path']}{config} | {r['dtype']} | {r['batch']} | {r['error'][:200]} | | | | | | | | |")
            continue
        nvml = r.get("nvml") or {}
        memory = f"{r['peak_memory_bytes'] / 2**30:.1f}" if r.get("peak_memory_bytes") else "-"
        published = "-" if r.get("mfu_published_peak") is None else f"{r['mfu_published_peak']:.1%}"
        mark = " (auto)" if r.get("auto_batch") else " (best)" if r.get("best_batch") else ""
        kernels = (r.get("attention_kernel") == "triton", r.get("norm_kernel") == "triton")
        path = r["path"] + {
            (True, True): "+triton",
            (True, False): "+triton-attention",
            (False, True): "+triton-norm",
        }.get(kernels, "")
        diff = r.get("vs_first_config")
        psnr = "-" if diff is None else "identical" if diff["psnr_db"] is None else f"{diff['psnr_db']} dB"
        lines.append(
            f"| {path}{config} | {r['dtype']} | {r['batch']}{mark} | {r['images_per_second']:.4g} | "
            f"{r['median_batch_images_per_second']:.4g}"
            f" | {r['mfu']:.1%} | {published} | {r['denoiser_forwards_per_image']:g} | {memory} | "
            f"{nvml.get('gpu_utilization_percent_mean', '-')} | {nvml.get('power_watts_mean', '-')} | {psnr} |"
        )
    h = result["headline"]

    def ratio(value) -> str:
        return "no such baseline ran" if value is None else f"{value}x"

    lines += [
        "",
        f"ours vs the paper settings: {ratio(h['vs_paper_baseline'])}; vs diffusers at its best batch: "
        f"{ratio(h['vs_diffusers_bf16_best_batch'])}",
    ]
    ab = result.get("ab")
    if ab and "rounds" in ab:
        lines.append(
            f"A/B, {ab['steps']} steps, {len(ab['rounds'])} interleaved rounds: {ab['config']} (batch "
            f"{ab['engine_batch']}) vs diffusers bf16 (batch {ab['diffusers_batch']}): {ab['ratio_median']}x "
            f"(rounds {ab['ratio_min']}-{ab['ratio_max']}x)"
        )
    return "\n".join(lines)
