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
    lines = [
        head,
        "",
        "| path | dtype | batch | images/s | median batch | MFU | forwards/image | peak GiB | GPU util % | W |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"| {r['path']} | {r['dtype']} | {r['batch']} | {r['error']} | | | | | | |")
            continue
        nvml = r.get("nvml") or {}
        peak = f"{r['peak_memory_bytes'] / 2**30:.1f}" if r.get("peak_memory_bytes") else "-"
        mark = " (auto)" if r.get("auto_batch") else " (best)" if r.get("best_batch") else ""
        kernels = (r.get("attention_kernel") == "triton", r.get("norm_kernel") == "triton")
        path = r["path"] + {
            (True, True): "+triton",
            (True, False): "+triton-attention",
            (False, True): "+triton-norm",
        }.get(kernels, "")
        lines.append(
            f"| {path} | {r['dtype']} | {r['batch']}{mark} | {r['images_per_second']:.4g} | "
            f"{r['median_batch_images_per_second']:.4g}"
            f" | {r['mfu']:.1%} | {r['denoiser_forwards_per_image']:g} | {peak} | "
            f"{nvml.get('gpu_utilization_percent_mean', '-')} | {nvml.get('power_watts_mean', '-')} |"
        )
    h = result["headline"]
    lines += [
        "",
        f"ours vs the paper settings: {h['vs_paper_baseline']}x; vs diffusers at its best batch: "
        f"{h['vs_diffusers_bf16_best_batch']}x",
    ]
    return "\n".join(lines)
