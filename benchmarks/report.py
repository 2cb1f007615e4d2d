"""The benchmark report: a markdown page (docs/benchmarks.md), its targets and the accuracy-vs-speed plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from measure import BATCHES, CROP_SIDE, GPU_BATCHES



def fmt(v, digits=2, unit=""):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}{unit}"


def fp32_reference(results: list[dict]) -> dict | None:
    """The run the ΔRMSE column is relative to: torch fp32 on the CPU, else on CUDA."""
    for label in ("torch fp32", "torch cuda fp32"):
        ref = next((r for r in results if r["spec"]["label"] == label and "accuracy" in r), None)
        if ref:
            return ref
    return None


def report(info: dict, results: list[dict], peers: dict, abl: dict | None) -> str:
    L = []
    L.append("# facekp benchmarks\n")
    L.append(f"Measured {info['date']} on **{info['cpu']}** (int8: {info['int8_kernels']}), {info['cores']} cores "
             f"(`torch.get_num_threads()` = {info['torch_threads']}), {info['platform']}; "
             f"Python {info['python']}, torch {info['torch']}, onnxruntime {info.get('onnxruntime', '–')}, "
             f"OpenCV {info['opencv']}. GPU: {info['gpu']}.\n")
    L.append(f"Model: `{info['weights']}` — stacked hourglass, {info['params'] / 1e6:.2f} M parameters, "
             f"**{info['flops'] / 1e6:.1f} MFLOP per crop** (96x96 input, multiply-adds counted as 2). "
             f"Machine fp32 GEMM (2048², torch.mm, all threads): **{info['gemm'] / 1e9:.0f} GFLOP/s**"
             + (f"; one thread: {info['gemm_1t'] / 1e9:.0f} GFLOP/s" if info.get("gemm_1t") else "") + ".\n")
    L.append(f"Crops for timing: {CROP_SIDE}x{CROP_SIDE} uint8 grayscale face crops from the validation photos "
             "(letterboxed to 96x96 inside `predict`). Single-crop latency is `Detector.predict` end to end "
             "(image in, points in image pixels out); throughput is `Detector.predict_batch(crops, batch_size=B)` "
             "end to end, preprocessing included. FLOP share: the network+decode rate times the model's FLOPs, over "
             "the machine's fp32 GEMM rate (int8 rows do integer arithmetic, so they can pass 100%).\n")
    L.append("## facekp backends\n")
    L.append("| backend | device | precision | threads | single crop median / p90 (ms) | batch 1 | batch 8 | batch 64 | batch 256 | "
             + ("batch 1024 | " if info["gpu"] != "none" else "") + "network+decode (crops/s) | FLOP share | full photo (ms) | peak RSS (MB) | RMSE (px) | ΔRMSE vs fp32 | NME |")
    L.append("|" + "---|" * (16 + (1 if info["gpu"] != "none" else 0)))
    ref = fp32_reference(results)
    base_rmse = ref["accuracy"]["rmse"] if ref else None
    for r in results:
        s = r["spec"]
        acc = r.get("accuracy", {})
        if "single" not in r:
            continue
        tp = r["throughput"]
        net = r["network_throughput"]
        share = net["crops_per_s"] * info["flops"] / (info["gemm"] if s["device"] == "cpu" else info.get("gemm_gpu", np.nan))
        photo = r["photo"]
        photo_s = f"{photo['median_ms']:.2f} ({photo['photo_size']})" if "median_ms" in photo else "n/a¹"
        cols = [s["backend"], s["device"], r.get("precision", s["precision"]), str(r["threads"]),
                f"{r['single']['median_ms']:.2f} / {r['single']['p90_ms']:.2f}"]
        cols += [f"{tp[str(b)]:.0f}" for b in (GPU_BATCHES if info["gpu"] != "none" and s["device"] != "cpu" else BATCHES)]
        if info["gpu"] != "none" and s["device"] == "cpu":
            cols.append("–")
        cols += [f"{net['crops_per_s']:.0f} @{net['batch']}", f"{100 * share:.0f}%", photo_s, f"{r['peak_rss_mb']:.0f}"
                 + (f" (+{r['cuda_peak_mb']:.0f} GPU)" if "cuda_peak_mb" in r else ""),
                 fmt(acc.get("rmse"), 3), fmt(acc.get("rmse") - base_rmse if acc and base_rmse is not None else None, 4),
                 fmt(acc.get("nme"), 4)]
        L.append("| " + " | ".join(cols) + " |")
    acc_only = [r for r in results if "single" not in r and "accuracy" in r]
    if acc_only:
        L.append("")
        L.append("Accuracy-only runs (precision emulated on this CPU, for the GPU paths): " + "; ".join(
            f"{r['spec']['label']}: RMSE {r['accuracy']['rmse']:.3f} px (Δ {r['accuracy']['rmse'] - base_rmse:+.4f})" for r in acc_only) + ".")
    L.append("")
    note = next((r["photo"]["note"] for r in results if "photo" in r and "note" in r["photo"]), None)
    if note:
        L.append(f"¹ {note}\n")
    parts = next((r["parts"] for r in results if r["spec"]["label"] == "torch fp32" and "parts" in r), None)
    if parts:
        L.append("Where one crop's time goes (torch fp32, median ms): " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()) + ".\n")
    # -- accuracy vs speed with peers -----------------------------------------------------------
    if peers["rows"] or peers["notes"]:
        L.append("## Accuracy vs speed, with peers\n")
        L.append(f"Validation faces: `split_by_identity(load_pts_folder(faces68), 0.15, seed=0)[1]`, {info.get('val_faces', '–')} faces "
                 f"({info.get('val_subsets', '')}). Every method predicts on the original photo; its points are mapped into the "
                 "sample's canonical 96x96 frame (`sample.frame`) and scored there: RMSE per coordinate (px), NME = mean point error "
                 "/ eye-centre distance. \"found\" = faces the method's own face detector found (scores are over those; the facekp "
                 "column beside it is facekp on exactly the same faces). Latency: one face, landmarks only (\"crop\"), and the whole "
                 "photo with the method's own face detector (\"photo\"). Throughput: crops/s at the best batch (peers: one after another, no batch API).\n")
        L.append("| method | framing | found / faces | RMSE (px) | NME | facekp RMSE on the same faces | crop latency median / p90 (ms) | photo latency (ms) | throughput (crops/s) | peak RSS (MB) |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for row in peers.get("rows", []):
            L.append("| " + " | ".join(row) + " |")
        if peers.get("notes"):
            L.append("")
            for note in peers["notes"]:
                L.append(f"- {note}")
        L.append("")
        L.append("![accuracy vs speed](benchmarks.png)\n")
    if abl:
        L.append("## What each CPU optimization is worth\n")
        for line in optimization_summary(abl, results, info["int8_kernels"]):
            L.append(f"- {line}")
        L.append("")
        L.append("Network forward (and heatmap decode) alone, median ms per call, same process, same weights:\n")
        L.append("| stage | variant | threads | batch 1 (ms) | batch 64 (ms) |")
        L.append("|---|---|---|---|---|")
        keys = {}
        for k, v in abl.items():
            stage, variant, th, b = [p.strip() for p in k.split("|")]
            keys.setdefault((stage, variant, th), {})[b] = v
        for (stage, variant, th), v in keys.items():
            L.append(f"| {stage} | {variant} | {th.split()[-1]} | {v.get('batch 1', float('nan')):.3f} | {v.get('batch 64', float('nan')):.2f} |")
        L.append("")
    L.append("## Targets\n")
    L.append("Verdicts of this one run. On a shared VM, repeat the script before calling a target met: runs "
             "a few minutes apart can differ by 30% or more.\n")
    for line in info.get("targets", []):
        L.append(f"- {line}")
    L.append("")
    L.append("## Reproduce\n")
    L.append("```bash\nbash benchmarks/peers/setup.sh /work/peers   # once: peer virtualenvs (dlib, MediaPipe)\n"
             "python benchmarks/run.py --weights FOLDER   # or without --weights for the bundled default model\n"
             "python benchmarks/run.py --device cuda --out docs/benchmarks-gpu.md   # the GPU rows alone\n```\n")
    return "\n".join(L)


def optimization_summary(abl: dict, results: list[dict], int8_kernels: str) -> list[str]:
    """One line per optimization: before -> after, from the ablation and the backend runs."""
    def a(stage, variant, threads, batch):
        return abl.get(f"{stage} | {variant} | threads {threads} | batch {batch}")

    out = []
    for th in (1, 2):
        u, f = a("network", "unfused, channels-last, inference_mode", th, 1), a("network", "fused, channels-last, inference_mode", th, 1)
        u64, f64 = a("network", "unfused, channels-last, inference_mode", th, 64), a("network", "fused, channels-last, inference_mode", th, 64)
        if u and f:
            out.append(f"BatchNorm folded into the convolutions ({th} thread{'s' if th > 1 else ''}): batch 1 {u:.2f} → {f:.2f} ms, "
                       f"batch 64 {u64:.1f} → {f64:.1f} ms.")
        c, cl = a("network", "fused, contiguous, inference_mode", th, 1), f
        c64, cl64 = a("network", "fused, contiguous, inference_mode", th, 64), f64
        if c and cl:
            out.append(f"channels-last vs contiguous (fused, {th} thread{'s' if th > 1 else ''}): batch 1 {c:.2f} vs {cl:.2f} ms, "
                       f"batch 64 {c64:.1f} vs {cl64:.1f} ms.")
        b1, b64 = a("network", "fused, channels-last, bf16 autocast", th, 1), a("network", "fused, channels-last, bf16 autocast", th, 64)
        if b1:
            out.append(f"bf16 autocast vs fp32 (torch, {th} thread{'s' if th > 1 else ''}): batch 1 {f:.2f} → {b1:.2f} ms, batch 64 {f64:.1f} → {b64:.1f} ms.")
    by = {r["spec"]["label"]: r for r in results if "single" in r}
    t1, t2 = by.get("torch fp32 1 thread"), by.get("torch fp32")
    if t1 and t2:
        out.append(f"threads, torch: single crop {t2['single']['median_ms']:.2f} ms with {t2['threads']} vs "
                   f"{t1['single']['median_ms']:.2f} ms with 1; batch 256 {t2['throughput']['256']:.0f} vs {t1['throughput']['256']:.0f} crops/s.")
    o, o1 = by.get("onnx fp32"), by.get("onnx fp32 1 thread")
    if o and t2:
        out.append(f"onnxruntime instead of torch eager (fp32): single crop {t2['single']['median_ms']:.2f} → {o['single']['median_ms']:.2f} ms, "
                   f"batch 64 {t2['throughput']['64']:.0f} → {o['throughput']['64']:.0f} crops/s, batch 256 {t2['throughput']['256']:.0f} → "
                   f"{o['throughput']['256']:.0f} crops/s.")
    if o and o1:
        out.append(f"threads, onnxruntime: single crop {o['single']['median_ms']:.2f} ms with {o['threads']} vs {o1['single']['median_ms']:.2f} ms "
                   f"with 1; batch 256 {o['throughput']['256']:.0f} vs {o1['throughput']['256']:.0f} crops/s.")
    q = by.get("onnx int8")
    if q and o:
        out.append(f"int8 (static QDQ, per-channel 7-bit weights, {int8_kernels}) vs fp32 onnxruntime: single crop {o['single']['median_ms']:.2f} → {q['single']['median_ms']:.2f} ms, "
                   f"batch 256 {o['throughput']['256']:.0f} → {q['throughput']['256']:.0f} crops/s; RMSE "
                   f"{o.get('accuracy', {}).get('rmse', float('nan')):.3f} → {q.get('accuracy', {}).get('rmse', float('nan')):.3f} px. CPUs without VNNI: "
                   "[int8-cpus.md](int8-cpus.md).")
    return out


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, xlabel in ((axes[0], "crop_ms", "one face, landmarks only: median latency (ms, log)"),
                            (axes[1], "photo_ms", "whole photo incl. face detection: median latency (ms, log)")):
        for p in points:
            if p.get(key) is None or not np.isfinite(p["rmse"]):
                continue
            ax.scatter(p[key], p["rmse"], s=60, color=p["color"], marker=p.get("marker", "o"), zorder=3)
            ax.annotate(p["label"], (p[key], p["rmse"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("RMSE in the 96x96 canonical frame (px)")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("facekp vs peers on the faces68 validation split (lower-left is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def targets(info, results) -> list[str]:
    out = []
    fp = next((r for r in results if r["spec"]["label"] == "torch fp32" and "single" in r), None)
    cpu = [r for r in results if "single" in r and r["spec"]["device"] == "cpu"]
    if fp and cpu:
        base = fp.get("accuracy", {}).get("rmse")
        ok = [r for r in cpu if base is None or abs(r.get("accuracy", {}).get("rmse", base) - base) <= 0.02]
        best_tp = max(ok, key=lambda r: max(r["throughput"].values()))
        best_lat = min(ok, key=lambda r: r["single"]["median_ms"])
        tp = max(best_tp["throughput"].values())
        lat = best_lat["single"]["median_ms"]
        default = next((r for r in cpu if r["spec"]["label"] == "onnx fp32"), fp)  # Detector()'s CPU default
        out.append(f"CPU batched throughput ≥ 1000 crops/s: **{'met' if tp >= 1000 else 'NOT met'}** — best {tp:.0f} crops/s "
                   f"({best_tp['spec']['label']}); the network alone needs {info['flops'] / 1e6:.0f} MFLOP/crop, so 1000 crops/s "
                   f"is {1000 * info['flops'] / 1e9:.0f} GFLOP/s = {100 * 1000 * info['flops'] / info['gemm']:.0f}% of this machine's "
                   "measured fp32 GEMM rate.")
        out.append(f"CPU single-crop latency ≤ 3 ms: **{'met' if lat <= 3 else 'NOT met'}** — best median {lat:.2f} ms "
                   f"({best_lat['spec']['label']}); default Detector on the CPU ({default['spec']['label']}, the bundled "
                   f"graph): {default['single']['median_ms']:.2f} ms.")
        if base is not None:
            out.append("Accuracy cost ≤ 0.02 px RMSE: " + "; ".join(
                f"{r['spec']['label']} Δ {r['accuracy']['rmse'] - base:+.4f} px" for r in results if "accuracy" in r and r is not fp) + ".")
    gpu = [r for r in results if r["spec"]["device"] == "cuda" and "throughput" in r]
    if gpu:
        best = max(gpu, key=lambda r: r["throughput"].get("1024", 0))
        v = best["throughput"].get("1024", 0)
        out.append(f"GPU ≥ 50,000 crops/s at batch 1024: **{'met' if v >= 50000 else 'NOT met'}** — {v:.0f} crops/s end to end "
                   f"({best['spec']['label']}, {best.get('device_name', '')}); network+decode alone {best['network_throughput']['crops_per_s']:.0f} crops/s.")
    else:
        out.append("GPU ≥ 50,000 crops/s at batch 1024: **not measured** — no GPU on this machine. The CUDA paths (autocast "
                   "fp16/bf16, pinned memory + non-blocking copies, one device→host sync per call, optional torch.compile) are "
                   "covered by CPU-side tests; this script measures them when CUDA is present.")
    return out
