"""Benchmark report: markdown (report.md) and PNG plots, from results.json's dict.

Every table built from an emulated profile says "emulated" in its heading and header row (and its
files are named emulated-*); numbers measured on this machine say "measured on <cpu>". A cell whose
compute clocks overran (the machine was slower than the device it emulated) is marked INVALID in
every table it appears in.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Sequence

from bench.cells import CLOUD_FINISH_TOKENS

MODE_ORDER = ("cloud_only", "edge_only", "speculative", "spec_early_exit", "spec_ee_eager", "spec_ee_adaptive")
MODE_LABEL = {"cloud_only": "cloud-only", "edge_only": "edge-only", "speculative": "plain speculative",
              "spec_early_exit": "spec + EE, paper's pre-draft (hint)", "spec_ee_eager": "spec + EE, eager pre-draft",
              "spec_ee_adaptive": "spec + EE, eager + adaptive length"}
INVALID = "INVALID"


def _finish_tokens(report: dict) -> str:
    """The cloud continuation each workload ran with (the robot's defaults unless a flag set one)."""
    set_for_all = report["settings"].get("cloud_finish_tokens")
    if set_for_all is not None:
        return str(set_for_all)
    return ", ".join(f"{wl['workload']} {CLOUD_FINISH_TOKENS.get(wl['workload'], 0)}" for wl in report["workloads"])


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> List[str]:
    return (["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def cost_per_1000(row: dict, gpu_hour_usd: Optional[float]) -> str:
    if gpu_hour_usd is None:
        return "-"
    return f"${row['cloud_s_per_decision'] * 1000 / 3600 * gpu_hour_usd:.3f}"


def headline_rows(rows: Dict[str, dict], gpu_hour_usd: Optional[float], claims: Dict[str, str]) -> List[list]:
    """One line per mode: latency, rates, cost, validity, ratio to cloud-only and the paper's claim."""
    cloud = rows.get("cloud_only")
    out = []
    for mode in MODE_ORDER:
        r = rows.get(mode)
        if r is None:
            continue
        valid = r.get("valid", True)
        hits = f"{r['predraft_hits']}/{r['predrafts']}" if r.get("predrafts") else "-"
        overruns = ""
        if not valid:  # which clock, and how many of its passes: noise (a few) or a machine too slow (many)
            overruns = " (" + ", ".join(f"{side} {r['overruns'][side]}/{r['passes'][side]}" for side in ("edge", "cloud")
                                        if r["overruns"][side]) + " passes overran)"
        out.append([MODE_LABEL[mode] + ("" if valid else f" **{INVALID}**{overruns}"),
                    f"{r['latency_ms_median']:.0f} / {r['latency_ms_p90']:.0f}",
                    f"{r['tokens_per_round']:.2f}" if r["tokens_per_round"] else "-",
                    f"{r['rounds_per_decision']:.2f}" if r["rounds_per_decision"] else "-",
                    f"{r['hint_accuracy']:.2f} ({r.get('hints_per_round', 0):.2f})" if mode.startswith("spec_e") else "-",
                    hits,
                    f"{r['cloud_s_per_decision'] * 1000:.1f} ms", cost_per_1000(r, gpu_hour_usd),
                    ratio(r["latency_ms_median"], cloud["latency_ms_median"]) if cloud else "-",
                    claims.get(mode, "")])
    return out


HEADLINE_HEADERS = ("mode", "latency p50 / p90 ms", "tokens/round", "rounds/decision", "hint acc. (hints/round)",
                    "pre-draft hits",
                    "cloud GPU time/decision", "cost per 1,000 decisions", "latency vs cloud-only", "paper's claim")


def paper_claims(workload: str, paper: Dict[str, float]) -> Dict[str, str]:
    if workload == "text":
        out = {}
        if "latency_vs_cloud_ar" in paper:
            out["spec_early_exit"] = f"{paper['latency_vs_cloud_ar']:.2f}x cloud AR"
        if "predraft_latency_vs_spec" in paper:
            out["spec_early_exit"] = out.get("spec_early_exit", "") + f"; {paper['predraft_latency_vs_spec']:.2f}x plain spec"
        return out
    if "go2_latency_vs_cloud_ar" in paper:
        return {"spec_early_exit": f"{paper['go2_latency_vs_cloud_ar']:.2f}x cloud AR"}
    return {}


def failed_validations(report: dict) -> List[str]:
    return [f"{wl['workload']} {r['mode']} x{r['ratio']:.3f}" for wl in report["workloads"]
            for r in (wl.get("validation") or {}).get("rows", []) if not r["within_tolerance"]]


def _reference_rows(wl: dict, rtt: float) -> Dict[str, dict]:
    rows = {r["mode"]: r for r in wl["rtt_sweep"] if r["rtt_ms"] == rtt}
    edge = next((r for r in wl["rtt_sweep"] if r["mode"] == "edge_only"), None)
    if edge and "edge_only" not in rows:
        rows["edge_only"] = edge
    return rows


def _measured_section(wl: dict, s: dict, hw: dict) -> List[str]:
    rtt = s["reference_rtt_ms"]
    lines = [f"### {wl['workload']}, measured on {hw['processor']} (RTT {rtt:.0f} ms, gamma {s['reference_gamma']})",
             "", f"{wl['items']} inputs x {wl['max_new_tokens']} new tokens; {wl['description']}. No GPU price: "
                 "cloud time is this CPU core's.", ""]
    rows = _reference_rows(wl, rtt)
    lines += table(HEADLINE_HEADERS, headline_rows(rows, None, {}))
    layers = {m: r.get("hint_accuracy_by_layer") for m, r in rows.items() if r.get("hint_accuracy_by_layer")}
    if layers:
        lines += ["", "Hint accuracy per exit layer (progressive hints, each layer's hint as it arrived): "
                  + "; ".join(f"{MODE_LABEL[m]}: " + ", ".join(f"layer {k} {v:.2f}" for k, v in acc.items())
                              for m, acc in layers.items())]
    return lines + [""]


def _emulated_section(wl: dict, entry: dict, s: dict) -> List[str]:
    invalid = [r["mode"] for r in entry["rows"] if not r.get("valid", True)]
    k = entry["dilation"]
    lines = [f"### {wl['workload']}, EMULATED {entry['profile']}: {entry['title']}", "",
             f"Edge: {entry['edge']['device']} running {entry['edge']['model']}; cloud: {entry['cloud']['device']} "
             f"running {entry['cloud']['model']}; link RTT {entry['rtt_ms']:g} ms; GPU ${entry['gpu_hour_usd']}/h. "
             f"The project's {wl['workload']} pair stands in for the models (image-token costs rescaled "
             f"{entry['image_scale'] or 'not needed'}). Time dilation x{k:g}"
             + (f" (every emulated duration and link delay ran {k:g} times slower and is reported divided by {k:g}: "
                f"overheads the profile does not model count {k:g} times less)" if k != 1 else " (none needed)")
             + f"; gamma {s['reference_gamma']}, {entry['rows'][0]['decisions']} inputs. "
             + (f"**{INVALID} cells (the machine overran the emulated device): {', '.join(invalid)}.**"
                if invalid else "No clock overran: every cell shows the emulated devices.")
             + (f" This CPU cannot prefill at the device's speed at this dilation: prefills add up to "
                f"{entry['prefill_excess_ms']:.0f} ms per decision (calibration estimate)."
                if entry.get("prefill_excess_ms", 0) >= 0.5 else ""), ""]
    lines += table(["emulated: " + HEADLINE_HEADERS[0]] + list(HEADLINE_HEADERS[1:]),
                   headline_rows({r["mode"]: r for r in entry["rows"]}, entry["gpu_hour_usd"],
                                 paper_claims(wl["workload"], entry["paper"])))
    ttg = entry.get("time_to_goal")
    if ttg:
        lines += ["", "Time to goal per closed-loop episode (emulated latency x decisions + motion time, episodes "
                      "that reached the goal):", ""]
        lines += table(["emulated: mode", "success", "decisions", "motion s", "time to goal s (median)",
                        "mean at p50 latency", "mean at p90 latency"],
                       [[MODE_LABEL[m], f"{t['success_rate']:.2f}"] + ([
                           f"{t['decisions_mean']:.1f}", f"{t['motion_s_mean']:.1f}", f"{t['time_to_goal_s_median']:.2f}",
                           f"{t['time_to_goal_s_mean']:.2f}", f"{t['time_to_goal_s_mean_at_p90']:.2f}"]
                           if t["success_rate"] else ["no episode reached the goal", "-", "-", "-", "-"])
                        for m, t in ttg.items() if m in MODE_LABEL])
    return lines + [""]


def _claims_section(report: dict) -> List[str]:
    """The paper's claims and the issue's goals next to what this run measured."""
    lines = ["## The paper's claims and the goals, against this run", ""]
    rows = []
    for wl in report["workloads"]:
        for entry in wl["emulated"]:
            by = {r["mode"]: r for r in entry["rows"]}
            if not {"cloud_only", "speculative", "spec_early_exit"} <= set(by):
                continue
            flag = "" if all(by[m].get("valid", True) for m in by) else f" ({INVALID} cells)"
            c, sp = by["cloud_only"]["latency_ms_median"], by["speculative"]["latency_ms_median"]
            for mode in ("spec_early_exit", "spec_ee_eager", "spec_ee_adaptive"):
                if mode not in by:
                    continue
                m = by[mode]["latency_ms_median"]
                claim = paper_claims(wl["workload"], entry["paper"]).get(mode, "")
                rows.append([f"emulated {entry['profile']}{flag}", MODE_LABEL[mode], claim or "-",
                             f"{m / c:.2f}x", f"{m / sp:.2f}x"])
    lines += table(["setting", "mode", "paper's claim", "measured latency vs cloud-only", "vs plain speculative"], rows)
    return lines + [""]


def _baselines_section(report: dict) -> List[str]:
    """Our cloud-only sends ONE request per decision; a cloud AR baseline with a round trip per
    token (a client that requests every token) pays (N - 1) more RTTs."""
    lines = ["## Which cloud baseline the paper's gains would need", "",
             "Our cloud-only baseline sends one request per decision and the cloud decodes all N tokens (the "
             "strongest baseline a user would pick). A cloud autoregressive baseline with one round trip per token "
             "(the client asks for each token) costs (N - 1) x RTT more. Latency of the paper's method (spec + EE, "
             "hint pre-drafting) against each:", ""]
    rows = []
    for wl in report["workloads"]:
        for entry in wl["emulated"]:
            by = {r["mode"]: r for r in entry["rows"]}
            if "cloud_only" not in by or "spec_early_exit" not in by:
                continue
            c = by["cloud_only"]
            n = c["tokens"] / max(1, c["decisions"])
            per_token = c["latency_ms_median"] + (n - 1) * entry["rtt_ms"]
            ee = by["spec_early_exit"]["latency_ms_median"]
            claim = entry["paper"].get("latency_vs_cloud_ar", entry["paper"].get("go2_latency_vs_cloud_ar"))
            need = "-"
            if claim:
                need = ("one request per decision" if ee / c["latency_ms_median"] <= claim else
                        "a round trip per token" if ee / per_token <= claim else "neither (see the map)")
            rows.append([f"emulated {entry['profile']}", f"{n:.1f}", f"{c['latency_ms_median']:.0f}",
                         f"{per_token:.0f}", f"{ee:.0f}", f"{ee / c['latency_ms_median']:.2f}x",
                         f"{ee / per_token:.2f}x", f"{claim:.2f}x" if claim else "-", need])
    lines += table(["setting", "tokens/decision", "cloud-only ms (ours)", "cloud AR, RTT per token ms",
                    "spec + EE ms", "vs ours", "vs RTT per token", "paper's claim", "baseline the claim needs"], rows)
    return lines + [""]


def _validation_section(report: dict) -> List[str]:
    lines = ["## Validation: the cpu-self profile reproduces the real run", "",
             "bench/calibrate.py measures this CPU's own forward passes by shape and fits the profile form; the "
             "same decisions then alternate between the real setup and one that emulates that profile (server "
             "`--compute-profile`, the edge's draft on its clock), at the reference RTT. Overruns are expected "
             "here (the profile is a fit to medians); the latency must agree.", ""]
    rows = []
    for wl in report["workloads"]:
        val = wl.get("validation")
        if not val:
            continue
        fit = wl.get("calibration", {}).get("profile", {}).get("fit_error", {})
        for r in val["rows"]:
            rows.append([wl["workload"], MODE_LABEL[r["mode"]], f"{r['real_ms_median']:.0f}",
                         f"{r['emulated_ms_median']:.0f}", f"{r['ratio']:.3f}",
                         "yes" if r["within_tolerance"] else f"**NO** (> {val['tolerance']:.0%})",
                         f"{r['overrun_fraction']:.2f}"])
        lines_fit = "; ".join(f"{side}: {err}" for side, err in fit.items())
        if lines_fit:
            lines.append(f"- {wl['workload']} profile fit, mean relative error by pass kind: {lines_fit}")
    lines += [""] + table(["workload", "mode", "measured p50 ms", "cpu-self emulated p50 ms", "ratio",
                           "within 10%", "overrun fraction"], rows)
    return lines + [""]


def _fleet_section(report: dict) -> List[str]:
    from bench.shared_cloud import capacity

    lines = []
    for wl in report["workloads"]:
        if not wl.get("fleet"):
            continue
        for profile, verifier in dict.fromkeys((r["profile"], r["verifier"]) for r in wl["fleet"]):
            rows = [r for r in wl["fleet"] if r["profile"] == profile and r["verifier"] == verifier]
            lines += [f"### {wl['workload']}, EMULATED shared cloud {profile}: K robots on one GPU "
                      f"({verifier} verifier)", "",
                      (f"Each robot decides, then moves for {rows[0]['think_s']:.2f} s before its next decision; "
                       "robots start at random offsets." if rows[0]["think_s"] > 0 else
                       "Robots decide back to back (no motion between decisions): the verifier's capacity.")
                      + _dilation_note(rows), ""]
            # columns a run recorded (older results.json files lack the newer ones)
            columns = [("emulated: robots", lambda r: f"{r['robots']} (the {r['same_as']} run)" if r.get("same_as")
                        else r["robots"]),
                       ("mode", lambda r: MODE_LABEL[r["mode"]]),
                       ("latency p50 / p90 ms", lambda r: f"{r['latency_ms_median']:.0f} / {r['latency_ms_p90']:.0f}"),
                       ("GPU busy", lambda r: f"{r['gpu_busy']:.2f}"),
                       ("cloud GPU time/decision", lambda r: f"{r['cloud_s_per_decision'] * 1000:.1f} ms"),
                       ("target passes/decision", lambda r: f"{r['target_passes_per_decision']:.2f}"),
                       ("time dilation", lambda r: f"x{r['dilation']:g}", "dilation"),
                       ("mean batch", lambda r: f"{r['mean_batch']:.2f}" if r.get("mean_batch") else "-", "mean_batch"),
                       ("target passes/s", lambda r: f"{r['target_passes_per_s']:.1f}", "target_passes_per_s"),
                       ("decisions/s (tokens/s)", lambda r: f"{r.get('decisions_per_s', 0):.1f} ({r.get('tokens_per_s', 0):.0f})"),
                       ("valid", lambda r: ("yes" if r["valid"] else INVALID)
                        + (f" ({len(r['errors'])} errors)" if r["errors"] else ""))]
            columns = [c for c in columns if len(c) == 2 or all(c[2] in r for r in rows)]
            if len({r.get("dilation") for r in rows}) < 2:  # one dilation: said once above the table
                columns = [c for c in columns if c[0] != "time dilation"]
            lines += table([c[0] for c in columns], [[c[1](r) for c in columns] for r in rows])
            fewest = min(x["robots"] for x in rows)
            single = [r for r in rows if r["mode"] == "cloud_only" and r["robots"] == fewest]
            if single:
                bar = 1.5 * single[0]["latency_ms_p90"]
                cap = capacity(rows, bar)
                lines += ["", f"Robots served per GPU with p90 <= {bar:.0f} ms (1.5x cloud-only's p90 with {fewest} "
                              f"robot{'s' if fewest > 1 else ''}): "
                              + ", ".join(f"{MODE_LABEL[m]} {n}" for m, n in cap.items()) + "."]
                at8 = {r["mode"]: r for r in rows if r["robots"] == 8}
                if "cloud_only" in at8:
                    lines.append("At 8 robots, p90 vs cloud-only's: " + ", ".join(
                        f"{MODE_LABEL[m]} {ratio(r['latency_ms_p90'], at8['cloud_only']['latency_ms_p90'])}"
                        for m, r in at8.items() if m != "cloud_only") + ".")
            lines.append("")
        lines += _batching_gain(wl["fleet"])
    return lines


def _dilation_note(rows: List[dict]) -> str:
    dilations = sorted({r["dilation"] for r in rows if "dilation" in r})
    if len(dilations) == 1:
        return f" Time dilation x{dilations[0]:g}."
    return (" Each fleet size ran at its own time dilation (column; reported times divided by it): K robots' "
            "drafts take turns on one core here." if dilations else "")


def _batching_gain(rows: List[dict]) -> List[str]:
    """Per profile, mode and batching verifier, at the largest fleet it and the serialized one
    both ran: its decisions per second over the serialized one's, and its p90 against one robot's."""
    lines = []
    for profile in dict.fromkeys(r["profile"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            cell = {(r["verifier"], r["robots"]): r for r in rows if r["profile"] == profile and r["mode"] == mode}
            for verifier in dict.fromkeys(v for v, _ in cell if v != "serialized"):
                both = sorted(k for v, k in cell if v == verifier and ("serialized", k) in cell)
                if not both:
                    continue
                k, one = both[-1], min(both)
                batched, serialized = cell[(verifier, k)], cell[("serialized", k)]
                lines.append(f"- {profile}, {MODE_LABEL[mode]}, {k} robots: {verifier} verifier "
                             f"{ratio(batched.get('decisions_per_s', 0), serialized.get('decisions_per_s', 0))} the "
                             f"serialized one's decisions/s; p90 "
                             f"{ratio(batched['latency_ms_p90'], cell[(verifier, one)]['latency_ms_p90'])} "
                             f"its own with {one} robot{'s' if one > 1 else ''}.")
    if lines:
        lines = ["Batching verifiers vs the serialized one (throughput ratio at the largest fleet; p90 against "
                 "the smallest fleet's):", ""] + lines + [""]
    return lines


def _map_section(report: dict) -> List[str]:
    lines = []
    for wl in report["workloads"]:
        if not wl.get("map"):
            continue
        rows = wl["map"]
        speeds = sorted({r["draft_speed"] for r in rows})
        lines += [f"### {wl['workload']}, EMULATED map: spec + EE (paper) latency / cloud-only, one robot "
                  f"({rows[0]['profile']})", "",
                  "Below 1.00 the edge-cloud method wins. Draft speed: the edge device's compute time x factor "
                  "(0.25 = a 4x faster draft).", ""]
        body = []
        for rtt in sorted({r["rtt_ms"] for r in rows}):
            cells = {r["draft_speed"]: r for r in rows if r["rtt_ms"] == rtt}
            body.append([f"{rtt:g}"] + [f"{cells[x]['ratio']:.2f}" + ("" if cells[x]["valid"] else f" {INVALID}")
                                        if x in cells else "-" for x in speeds])
        lines += table(["emulated: RTT ms"] + [f"draft time x{x:g}" for x in speeds], body) + [""]
        for entry in wl["emulated"]:
            acc = entry.get("cross_check", {}).get("by_acceptance")
            if acc and entry["profile"] == rows[0]["profile"]:
                lines += ["Acceptance axis (STATIC FORMULA, bench/projection.py; the emulation cannot vary the "
                          "pair's acceptance): spec + EE / cloud-only at the profile's RTT = "
                          + ", ".join(f"acceptance {a}: {v['spec_early_exit'] / v['cloud_only']:.2f}"
                                      for a, v in acc.items()) + ".", ""]
    return lines


def _cross_check_section(report: dict) -> List[str]:
    rows = []
    for wl in report["workloads"]:
        for entry in wl["emulated"]:
            f = entry.get("cross_check", {}).get("latency_ms")
            if not f:
                continue
            by = {r["mode"]: r for r in entry["rows"]}
            for mode in f:
                if mode in by:
                    rows.append([f"{entry['profile']}", MODE_LABEL[mode], f"{f[mode]:.0f}",
                                 f"{by[mode]['latency_ms_median']:.0f}"])
    if not rows:
        return []
    return (["## STATIC FORMULA cross-check (not a measurement)", "",
             "bench/projection.py's closed form with the profile's costs and the measured rates, next to the emulated "
             "median. Where they differ, the formula misses queueing, overheads or overlap.", ""]
            + table(["profile", "mode", "formula ms", "emulated ms"], rows) + [""])


def _sweeps_section(wl: dict, s: dict, hw: dict) -> List[str]:
    lines = [f"### {wl['workload']}, measured on {hw['processor']}: RTT sweep (median latency per decision, ms)", ""]
    modes = [m for m in MODE_ORDER if m != "edge_only"]
    body = []
    for rtt in s["rtts_ms"]:
        row = {r["mode"]: r["latency_ms_median"] for r in wl["rtt_sweep"] if r["rtt_ms"] == rtt}
        if "cloud_only" in row:
            body.append([f"{rtt:.0f}"] + [f"{row[m]:.0f} ({row[m] / row['cloud_only']:.2f}x)" if m in row else "-"
                                          for m in modes])
    lines += table(["RTT ms"] + [MODE_LABEL[m] for m in modes], body)
    if wl["gamma_sweep"]:
        lines += ["", f"Gamma sweep at RTT {s['reference_rtt_ms']:.0f} ms:", ""]
        lines += table(["gamma", "mode", "latency p50 ms", "tokens/round", "acceptance", "pre-draft hits"],
                       [[r["gamma"], MODE_LABEL[r["mode"]], f"{r['latency_ms_median']:.0f}",
                         f"{r['tokens_per_round']:.2f}", f"{r['acceptance_rate']:.2f}", f"{r['predraft_hit_rate']:.2f}"]
                        for r in sorted(wl["gamma_sweep"], key=lambda r: (r["gamma"], MODE_ORDER.index(r["mode"])))])
    ttg = wl.get("time_to_goal")
    if ttg:
        lines += ["", f"Time to goal per closed-loop episode at the measured RTT {s['reference_rtt_ms']:.0f} ms "
                      f"(latency x decisions + motion time): " + ", ".join(
                          f"{MODE_LABEL[m]} " + (f"{t['time_to_goal_s_median']:.2f} s" if t["success_rate"] else
                                                 "never reached the goal") for m, t in ttg.items()
                          if m in MODE_LABEL) + "."]
    return lines + [""]


def write(report: dict, out_dir: str) -> str:
    s, hw = report["settings"], report["hardware"]
    lines = [
        "# Benchmark results", "",
        f"Measured on **{hw['processor']}** ({hw['cpus']} CPUs, {hw['machine']}, torch {hw['torch']}): {hw['regime']}; "
        f"edge cores {hw['edge_cores']}, cloud cores {hw['cloud_cores']}. Edge and cloud are separate processes "
        f"joined by the real WebSocket transport through a user-space link emulator. "
        f"{'Quick settings. ' if s['quick'] else ''}Block 0 merged with the cloud's prefill: "
        f"{'yes' if s['merge_first_block'] else 'no'}; the cloud finishes up to "
        f"{_finish_tokens(report)} token(s) itself after a verified block; greedy blocks offer "
        f"{s.get('alternatives', 0)} alternative(s) per position"
        + (f" (the verifier taking at most {s['max_branches']}, the draft's likeliest)"
           if s.get("max_branches") is not None else "") + "; the edge pre-drafts on "
        + (f"hints with an exit probability >= {s['hint_min_confidence']}" if s.get("hint_min_confidence")
           else "every hint")
        + f". Elapsed {report.get('elapsed_s', 0):.0f} s.", "",
        "Every lossless mode produced exactly cloud-only's greedy tokens on every input, measured and emulated "
        "(checked in the run).", "",
        "EMULATED rows run the real models and the real system; forward passes and the link take the profile's "
        "device and network times (profiles/*.yaml, sources in each file).", "",
    ]
    for name, why in report.get("skipped", {}).items():
        lines += [f"Workload **{name}** skipped: models not available ({'; '.join(map(str, why))}).", ""]
    if s.get("fleet_only"):  # a separate shared-cloud sweep: calibration and fleets, nothing else
        lines += ["## Shared cloud (EMULATED): K robots on one GPU", ""] + _fleet_section(report)
        return _finish(report, out_dir, lines)
    lines += ["## Headline: decision latency and cost per decision", ""]
    for wl in report["workloads"]:
        lines += _measured_section(wl, s, hw)
        for entry in wl["emulated"]:
            lines += _emulated_section(wl, entry, s)
    lines += _claims_section(report) + _baselines_section(report) + _validation_section(report)
    fleet = _fleet_section(report)
    if fleet:
        lines += ["## Shared cloud (EMULATED): K robots on one GPU", ""] + fleet
    where = _map_section(report)
    if where:
        lines += ["## Where each side wins (EMULATED)", ""] + where
    lines += ["## Measured sweeps", ""]
    for wl in report["workloads"]:
        lines += _sweeps_section(wl, s, hw)
    assisted = report.get("assisted")
    if assisted:
        from bench.assisted import report_lines

        lines += report_lines(assisted, hw["processor"], table)
    lines += _cross_check_section(report)
    return _finish(report, out_dir, lines)


def _finish(report: dict, out_dir: str, lines: List[str]) -> str:
    markdown = "\n".join(lines)
    with open(os.path.join(out_dir, "report.md"), "w") as handle:
        handle.write(markdown + "\n")
    _plots(report, out_dir)
    return markdown


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plots(report: dict, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = report["workloads"]
    if not workloads:
        return
    cpu = report["hardware"]["processor"]
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.2), squeeze=False)
    for ax, wl in zip(axes[0], workloads):
        for mode in MODE_ORDER:
            pts = sorted((r["rtt_ms"], r["latency_ms_median"]) for r in wl["rtt_sweep"] if r["mode"] == mode)
            if mode == "edge_only" and pts:
                ax.axhline(pts[0][1], ls=":", color="grey", label="edge-only (no network)")
            elif pts:
                ax.plot(*zip(*pts), marker="o", label=MODE_LABEL[mode])
        ax.set_title(f"{wl['workload']}: measured on {cpu[:28]}", fontsize=9)
        ax.set_xlabel("emulated RTT (ms)")
        ax.set_ylabel("median latency per decision (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, os.path.join(out_dir, "latency_vs_rtt.png"))
    entries = [(wl["workload"], e) for wl in workloads for e in wl["emulated"]]
    if entries:
        fig, axes = plt.subplots(1, len(entries), figsize=(5 * len(entries), 4.2), squeeze=False)
        for ax, (name, entry) in zip(axes[0], entries):
            rows = [r for m in MODE_ORDER for r in entry["rows"] if r["mode"] == m]
            ax.bar(range(len(rows)), [r["latency_ms_median"] for r in rows],
                   color=["tab:grey" if not r.get("valid", True) else "tab:blue" for r in rows])
            ax.set_xticks(range(len(rows)), [r["mode"].replace("spec_", "") for r in rows], rotation=35, fontsize=7)
            ax.set_title(f"EMULATED {entry['profile']}\n({name} pair, dilation x{entry['dilation']:g})", fontsize=8)
            ax.set_ylabel("median latency per decision (emulated ms)")
            ax.grid(alpha=0.3, axis="y")
        _save(fig, os.path.join(out_dir, "emulated_latency.png"))
    fleets = [(wl["workload"], wl["fleet"]) for wl in workloads if wl.get("fleet")]
    for name, rows in fleets:
        profiles = list(dict.fromkeys(r["profile"] for r in rows))
        fig, axes = plt.subplots(1, len(profiles), figsize=(5.5 * len(profiles), 4.2), squeeze=False)
        for ax, profile in zip(axes[0], profiles):
            for mode, verifier in dict.fromkeys((r["mode"], r["verifier"]) for r in rows):
                pts = sorted((r["robots"], r["latency_ms_p90"]) for r in rows
                             if r["profile"] == profile and r["mode"] == mode and r["verifier"] == verifier)
                ax.plot(*zip(*pts), marker="o", ls="-" if verifier == "batched" else "--",
                        label=f"{MODE_LABEL[mode]} ({verifier})")
            ax.set_title(f"EMULATED shared GPU: {profile}", fontsize=8)
            ax.set_xlabel("robots on one GPU")
            ax.set_ylabel("p90 decision latency (emulated ms)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        _save(fig, os.path.join(out_dir, f"emulated_shared_cloud_{name}.png"))
