"""Benchmark report: a markdown table (report.md) and PNG plots, from results.json's dict."""

from __future__ import annotations

import os

MODE_ORDER = ("cloud_only", "edge_only", "speculative", "spec_early_exit", "spec_ee_eager")


def _fmt(x, digits=2):
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def write(report: dict, out_dir: str) -> str:
    s = report["settings"]
    hw = report["hardware"]
    lines = [
        "# Benchmark results",
        "",
        f"Regime: **{hw['regime']}**; edge cores {hw['edge_cores']}, cloud cores {hw['cloud_cores']}, "
        f"{hw['cpus']} CPUs ({hw['processor']}), torch {hw['torch']}. Edge and cloud are separate processes "
        f"joined by the real WebSocket transport through a user-space link emulator "
        f"(jitter {s['jitter_ms']} ms, bandwidth {s['bandwidth_mbps'] or 'unlimited'} Mbit/s, loss {s['loss']}). "
        f"{'Quick settings.' if s['quick'] else ''} Elapsed {report.get('elapsed_s', 0):.0f} s.",
        "",
        "Every lossless mode produced exactly cloud-only's greedy tokens on every input (checked in the run).",
        "",
    ]
    for name, why in report.get("skipped", {}).items():
        lines += [f"Workload **{name}** skipped: models not available ({'; '.join(map(str, why))}).", ""]
    for wl in report["workloads"]:
        ref = [r for r in wl["rtt_sweep"] if r["rtt_ms"] == s["reference_rtt_ms"]]
        by_mode = {r["mode"]: r for r in ref}
        edge = next((r for r in wl["rtt_sweep"] if r["mode"] == "edge_only"), None)
        if edge and "edge_only" not in by_mode:
            by_mode["edge_only"] = edge
        cloud = by_mode.get("cloud_only")
        spec = by_mode.get("speculative")
        lines += [f"## {wl['workload']}: {wl['description']}", "",
                  f"{wl['items']} inputs x {wl['max_new_tokens']} new tokens; RTT {s['reference_rtt_ms']:.0f} ms, "
                  f"gamma {s['reference_gamma']}.", "",
                  "| mode | latency/decision median (p90) ms | ms/token median (p90) | vs cloud-only | vs plain spec "
                  "| tokens/round | acceptance | hint acc. | pre-draft hits | edge idle | cloud idle "
                  "| target passes/token | cloud s/token | cloud compute vs cloud-only | bytes/token |",
                  "|" + "---|" * 15]
        for mode in MODE_ORDER:
            r = by_mode.get(mode)
            if r is None:
                continue
            vs_cloud = r["latency_ms_median"] / cloud["latency_ms_median"] if cloud else 0
            vs_spec = r["latency_ms_median"] / spec["latency_ms_median"] if spec else 0
            compute = r["cloud_s_per_token"] / cloud["cloud_s_per_token"] if cloud and cloud["cloud_s_per_token"] else 0
            lines.append(
                f"| {mode} | {r['latency_ms_median']:.0f} ({r['latency_ms_p90']:.0f}) "
                f"| {r['ms_per_token_median']:.1f} ({r['ms_per_token_p90']:.1f}) | {vs_cloud:.2f}x | {vs_spec:.2f}x "
                f"| {r['tokens_per_round']:.2f} | {r['acceptance_rate']:.2f} | {r['hint_accuracy']:.2f} "
                f"| {r['predraft_hit_rate']:.2f} | {r['edge_idle_frac']:.2f} | {r['cloud_idle_frac']:.2f} "
                f"| {r['target_passes_per_token']:.2f} | {r['cloud_s_per_token'] * 1000:.1f} ms "
                f"| {compute:.2f}x | {r['bytes_per_token']:.0f} |")
        lines += ["", "RTT sweep (median latency per decision, ms; ratio to cloud-only):", "",
                  "| RTT ms | cloud_only | speculative | spec_early_exit | spec_ee_eager | spec/cloud | ee/cloud "
                  "| ee/spec | eager/cloud | eager/ee |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for rtt in s["rtts_ms"]:
            row = {r["mode"]: r["latency_ms_median"] for r in wl["rtt_sweep"] if r["rtt_ms"] == rtt}
            if {"cloud_only", "speculative", "spec_early_exit", "spec_ee_eager"} <= set(row):
                c, sp, ee, ea = (row[m] for m in ("cloud_only", "speculative", "spec_early_exit", "spec_ee_eager"))
                lines.append(f"| {rtt:.0f} | {c:.0f} | {sp:.0f} | {ee:.0f} | {ea:.0f} | {sp / c:.2f} | {ee / c:.2f} "
                             f"| {ee / sp:.2f} | {ea / c:.2f} | {ea / ee:.2f} |")
        if wl["gamma_sweep"]:
            lines += ["", f"Gamma sweep at RTT {s['reference_rtt_ms']:.0f} ms:", "",
                      "| gamma | mode | latency median ms | tokens/round | acceptance | pre-draft hits |",
                      "|---|---|---|---|---|---|"]
            for r in sorted(wl["gamma_sweep"], key=lambda r: (r["gamma"], r["mode"])):
                lines.append(f"| {r['gamma']} | {r['mode']} | {r['latency_ms_median']:.0f} | "
                             f"{r['tokens_per_round']:.2f} | {r['acceptance_rate']:.2f} | "
                             f"{r['predraft_hit_rate']:.2f} |")
        lines.append("")
    assisted = report.get("assisted")
    if assisted:
        lines += ["## Reference: transformers assisted generation vs our engine (text pair, in-process, no network)",
                  "",
                  f"{assisted['prompts']} prompts, gamma {assisted['gamma']}, {assisted['threads']} torch threads; "
                  "identical greedy outputs checked.", "",
                  "| decoder | tokens/s |", "|---|---|"]
        for name in ("target_alone", "hf_assisted_constant", "hf_assisted_heuristic", "ours_in_process"):
            lines.append(f"| {name} | {assisted[name]['tokens_per_s']:.1f} |")
        lines += ["", f"Ours vs HF assisted (constant gamma): **{assisted['ratio_ours_vs_hf_constant']:.2f}x**; "
                      f"vs HF heuristic schedule: **{assisted['ratio_ours_vs_hf_heuristic']:.2f}x**.", ""]
    proj = report.get("projection")
    if proj and proj["workloads"]:
        a = proj["assumptions"]
        lines += ["## PROJECTION to the paper's regime (not a measurement)", "", proj["label"] + ".",
                  f"Assumed: edge {a['edge_ms_per_token']} ms/token, cloud {a['cloud_ms_per_token']} ms/token, "
                  f"verify = {a['verify_cost_factor']} x a decode step, {a['new_tokens']} tokens per decision. "
                  f"Paper reports: {a['paper_reported']}.", "",
                  "| workload | RTT ms | tokens/round (measured) | pre-draft hits (measured) | spec vs cloud-AR "
                  "| spec+EE vs cloud-AR | spec+EE vs spec |", "|---|---|---|---|---|---|---|"]
        for wl in proj["workloads"]:
            for r in wl["rows"]:
                lines.append(f"| {wl['workload']} | {r['rtt_ms']} | {wl['tokens_per_round']:.2f} | "
                             f"{wl['predraft_hit_rate']:.2f} | {-r['spec_vs_cloud_reduction'] * 100:+.0f}% | "
                             f"{-r['ee_vs_cloud_reduction'] * 100:+.0f}% | {-r['ee_vs_spec_reduction'] * 100:+.0f}% |")
        lines.append("")
    markdown = "\n".join(lines)
    with open(os.path.join(out_dir, "report.md"), "w") as handle:
        handle.write(markdown + "\n")
    _plots(report, out_dir)
    return markdown


def _plots(report: dict, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = report["workloads"]
    if not workloads:
        return
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.2), squeeze=False)
    for ax, wl in zip(axes[0], workloads):
        for mode in MODE_ORDER:
            pts = sorted((r["rtt_ms"], r["latency_ms_median"]) for r in wl["rtt_sweep"] if r["mode"] == mode)
            if mode == "edge_only" and pts:
                ax.axhline(pts[0][1], ls=":", color="grey", label="edge_only (no network)")
                continue
            if pts:
                ax.plot(*zip(*pts), marker="o", label=mode)
        ax.set_title(f"{wl['workload']}: latency per decision vs RTT")
        ax.set_xlabel("emulated RTT (ms)")
        ax.set_ylabel("median latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "latency_vs_rtt.png"), dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.2), squeeze=False)
    for ax, wl in zip(axes[0], workloads):
        for mode in ("speculative", "spec_early_exit", "spec_ee_eager"):
            pts = sorted((r["gamma"], r["latency_ms_median"]) for r in wl["gamma_sweep"] if r["mode"] == mode)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=mode)
        cloud = [r["latency_ms_median"] for r in wl["rtt_sweep"]
                 if r["mode"] == "cloud_only" and r["rtt_ms"] == report["settings"]["reference_rtt_ms"]]
        if cloud:
            ax.axhline(cloud[0], ls="--", color="k", label="cloud_only")
        ax.set_title(f"{wl['workload']}: latency vs gamma (RTT {report['settings']['reference_rtt_ms']:.0f} ms)")
        ax.set_xlabel("gamma")
        ax.set_ylabel("median latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "latency_vs_gamma.png"), dpi=110)
    plt.close(fig)
