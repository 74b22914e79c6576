"""Plots (bench/results/*.png, copied to docs/) and the generated parts of docs/BENCHMARKS.md.

``python -m bench report`` redoes both from the JSON results of the last runs. The document's
hand-written text is kept: only the blocks between ``<!-- BEGIN GENERATED: part -->`` and
``<!-- END GENERATED: part -->`` are replaced.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

from .common import DOCS, RESULTS, load, median, spread

DOC = DOCS / "BENCHMARKS.md"
KIB = 1024


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(values: list[float]) -> tuple[float, float, float]:
    med, lo, hi = spread(values)
    return med, med - lo, hi - med


def plot_overhead(res: dict[str, Any]) -> str:
    plt = _plt()
    s = res["summary"]
    p = res["params"]
    proxies = [n for n in res["targets"] if n != "direct"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    colors = {
        "gateway": "tab:blue",
        "gateway, log warning": "tab:purple",
        "gateway, asyncio+h11": "tab:cyan",
        "litellm": "tab:red",
        "direct": "tab:gray",
    }

    ax = axes[0]
    width = 0.8 / max(1, len(proxies))
    metrics = [("added_p50_ms", "p50"), ("added_p99_ms", "p99")]
    for i, name in enumerate(proxies):
        meds, lo, hi = zip(*(_err(s[name][m]) for m, _ in metrics), strict=True)
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, meds, width, yerr=[lo, hi], capsize=3, label=name, color=colors.get(name))
        for x, v in zip(xs, meds, strict=True):
            ax.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + width * (len(proxies) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels([f"added {lbl}" for _, lbl in metrics])
    ax.set_ylabel("ms added over direct")
    ax.set_title(
        f"Non-streaming latency added\n{p['latency_n']} req x {p['rounds']} rounds per path; "
        "bar = median of rounds, whisker = min-max",
        fontsize=9,
    )
    ax.legend(fontsize=8)

    ax = axes[1]
    metrics2 = [("added_ttft_ms", "TTFT (ms)", 1.0), ("added_itl_ms", "ITL (µs)", 1000.0)]
    for i, name in enumerate(proxies):
        vals = [_err([v * k for v in s[name][m]]) for m, _, k in metrics2]
        meds, lo, hi = zip(*vals, strict=True)
        xs = [j + i * width for j in range(len(metrics2))]
        ax.bar(xs, meds, width, yerr=[lo, hi], capsize=3, label=name, color=colors.get(name))
        for x, v in zip(xs, meds, strict=True):
            ax.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + width * (len(proxies) - 1) / 2 for j in range(len(metrics2))])
    ax.set_xticklabels([f"added {lbl}" for _, lbl, _ in metrics2])
    ax.set_ylabel("added over direct (ms for TTFT, µs for ITL)")
    ax.set_title(
        f"{p['stream_tokens']}-token streams\n{p['stream_n']} streams x {p['rounds']} rounds per "
        "path; median of rounds, min-max",
        fontsize=9,
    )

    ax = axes[2]
    concs = [str(c) for c in p["concurrencies"]]
    names = res["targets"]
    width3 = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [_err(s[name]["rps"][c]) for c in concs]
        meds, lo, hi = zip(*vals, strict=True)
        xs = [j + i * width3 for j in range(len(concs))]
        ax.bar(xs, meds, width3, yerr=[lo, hi], capsize=3, label=name, color=colors.get(name))
    ax.set_yscale("log")
    ax.set_xticks([j + width3 * (len(names) - 1) / 2 for j in range(len(concs))])
    ax.set_xticklabels([f"concurrency {c}" for c in concs])
    ax.set_ylabel("requests/s (log scale)")
    ax.set_title(
        f"Max throughput, 16-token answers\n{p['throughput_duration_s']:g} s per point x "
        f"{p['rounds']} rounds; median, min-max",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = RESULTS / "overhead.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out.name


def plot_engine(res: dict[str, Any]) -> str:
    plt = _plt()
    s = res["summary"]
    p = res["params"]
    names = res["targets"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    colors = ["tab:gray", "tab:blue", "tab:orange"]
    n = p["single_n"] * p["rounds"]
    for ax, key, label in (
        (axes[0], "decode_tps", "decode tokens/s"),
        (axes[1], "ttft_ms", "time to first token (ms)"),
    ):
        vals = [_err(s[name][key]) for name in names]
        meds, lo, hi = zip(*vals, strict=True)
        ax.bar(range(len(names)), meds, yerr=[lo, hi], capsize=4, color=colors[: len(names)])
        for x, v in enumerate(meds):
            ax.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([nm.replace(" server", "\nserver") for nm in names], fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(
            f"{label}, single stream\n{n} streams per path ({p['rounds']} rounds); median of "
            "rounds, min-max",
            fontsize=9,
        )
    ax = axes[2]
    conc = res.get("concurrent") or {}
    y = 0.0
    ticks: list[float] = []
    labels: list[str] = []
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    for si, (name, data) in enumerate(conc.items()):
        clients = data["clients"]
        t0 = min((c["sent"] for c in clients if c.get("sent")), default=0.0)
        short = name.replace("llama-cpp-python server", "llama-cpp srv").replace(
            ", interrupt_requests off", " (no interrupt)"
        )
        for i, c in enumerate(clients):
            if c.get("sent") is not None:
                start = c["sent"] - t0
                end_t = c["done"] - t0
                ax.barh(y, end_t - start, left=start, color="lightgray", edgecolor="k")
                if c.get("first"):
                    first = c["first"] - t0
                    ax.barh(y, end_t - first, left=first, color=palette[si % len(palette)])
            else:
                ax.annotate(
                    "connection closed, no response",
                    (0.05, y),
                    va="center",
                    fontsize=7,
                    color="red",
                )
            ticks.append(y)
            labels.append(f"{short} #{i + 1}")
            y += 1
        y += 0.6
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first request")
    ax.set_title(
        f"{p['clients']} clients sent 20 ms apart (grey: waiting, colour: streaming)\n"
        "one run per server",
        fontsize=9,
    )
    fig.tight_layout()
    out = RESULTS / "engine.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out.name


def plot_parser(res: dict[str, Any]) -> str:
    plt = _plt()
    kinds = sorted({p["corpus"] for p in res["points"]}, key=lambda k: k != "mixed")
    fig, axes = plt.subplots(1, len(kinds), figsize=(7 * len(kinds), 5), squeeze=False)
    series = [
        ("ours_whole", "ours, whole text", "tab:green", "o"),
        ("ours_tokens", "ours, per token", "tab:blue", "s"),
        ("ours_chars", "ours, per character", "tab:cyan", "^"),
        ("vllm", "vLLM glm47 + glm45, per token", "tab:red", "D"),
    ]
    for ax, kind in zip(axes[0], kinds, strict=True):
        pts = [p for p in res["points"] if p["corpus"] == kind]
        for key, label, color, marker in series:
            xs, ys, lo, hi = [], [], [], []
            for p in pts:
                d = p.get(key) or {}
                if "median_s" in d:
                    xs.append(p["bytes"] / KIB)
                    ys.append(d["median_s"])
                    lo.append(d["median_s"] - d["min_s"])
                    hi.append(d["max_s"] - d["median_s"])
            if xs:
                ax.errorbar(
                    xs, ys, yerr=[lo, hi], label=label, color=color, marker=marker, capsize=3
                )
            stopped = [p for p in pts if (p.get(key) or {}).get("timed_out")]
            for p in stopped[:1]:
                ax.annotate(
                    f"{p['bytes'] // KIB} KiB: > {res['params']['cap_s']:g} s, stopped",
                    (p["bytes"] / KIB, res["params"]["cap_s"]),
                    color=color,
                    fontsize=8,
                    ha="right",
                )
                ax.scatter([p["bytes"] / KIB], [res["params"]["cap_s"]], color=color, marker="x")
        # Reference slopes through the first point of "ours, per token" and of vLLM.
        for key, color in (("ours_tokens", "tab:blue"), ("vllm", "tab:red")):
            base = next((p for p in pts if "median_s" in (p.get(key) or {})), None)
            if base is None:
                continue
            x0, y0 = base["bytes"] / KIB, base[key]["median_s"]
            xs = [p["bytes"] / KIB for p in pts]
            ax.plot(xs, [y0 * (x / x0) for x in xs], ":", color=color, alpha=0.5, lw=1)
            ax.plot(xs, [y0 * (x / x0) ** 2 for x in xs], "--", color=color, alpha=0.35, lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("output size (KiB, UTF-8)")
        ax.set_ylabel("CPU seconds to parse it (log)")
        ax.set_title(
            f"{kind} corpus: median of up to 5 runs, whiskers min-max\n"
            "dotted: linear from the first point, dashed: quadratic",
            fontsize=9,
        )
        ax.grid(True, which="both", alpha=0.2)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = RESULTS / "parser.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out.name


def plot_vllm(res: dict[str, Any]) -> str:
    plt = _plt()
    s = res["summary"]
    p = res["params"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, key, label in (
        (axes[0], "all_ttft_ms", "time to first token (ms)"),
        (axes[1], "all_itl_ms", "inter-token latency (ms)"),
        (axes[2], "all_total_ms", "whole stream (ms)"),
    ):
        if key not in s["direct"]:
            continue
        data = [s["direct"][key], s["gateway"][key]]
        ax.boxplot(data, whis=(0, 100))
        ax.set_xticks([1, 2])
        ax.set_xticklabels(["direct (vLLM)", "through the gateway"])
        for i, d in enumerate(data, 1):
            ax.annotate(
                f"median {median(d):.2f}",
                (i, median(d)),
                xytext=(8, 0),
                textcoords="offset points",
                fontsize=8,
            )
        ax.set_ylabel(label)
        ax.set_title(
            f"{label}\n{p['n'] * p['rounds']} streams per path; box IQR, whiskers min-max",
            fontsize=9,
        )
    fig.suptitle(f"glm-tiny on CPU vLLM, {p['max_tokens']} tokens per stream", fontsize=10)
    fig.tight_layout()
    out = RESULTS / "vllm.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out.name


def _machine_block(results: dict[str, dict[str, Any]]) -> str:
    m = next((r["machine"] for r in results.values() if r and "machine" in r), None)
    if m is None:
        return "(no results yet)"
    lines = [
        f"- CPU: {m['cpu']}, {m['cores']} cores (shared with other work); RAM {m['ram_gib']} GiB",
        f"- OS: {m['os']}, kernel {m['kernel']}; Python {m['python']}",
        f"- Date of the first part's run: {m['date']}",
    ]
    for env, pkgs in m["packages"].items():
        if pkgs:
            lines.append(f"- {env}: " + ", ".join(f"{k} {v}" for k, v in pkgs.items()))
    for part, r in results.items():
        if not r:
            continue
        loads = [x["loadavg"][0] for x in r.get("rounds", []) if "loadavg" in x]
        loads += [x["loadavg"][0] for x in r.get("points", []) if "loadavg" in x]
        if loads:
            lines.append(
                f"- Load average (1 min) during {part}: {min(loads):.2f}-{max(loads):.2f} "
                f"(at the start of each round or point)"
            )
    return "\n".join(lines)


def write(docs: bool = True) -> None:
    from . import engine, overhead, parsers, vllm_path

    results = {
        "overhead": load("overhead"),
        "engine": load("engine"),
        "parser": load("parser"),
        "vllm": load("vllm"),
    }
    blocks: dict[str, str] = {"machine": _machine_block(results)}
    makers = {
        "overhead": (overhead.report, plot_overhead),
        "engine": (engine.report, plot_engine),
        "parser": (parsers.report, plot_parser),
        "vllm": (vllm_path.report, plot_vllm),
    }
    # Summaries are recomputed from the raw samples, so a report change applies to old runs.
    for part, module in (("overhead", overhead), ("engine", engine), ("vllm", vllm_path)):
        res = results[part]
        if res and "rounds" in res:
            try:
                res["summary"] = module.summarize(res)
            except Exception as exc:
                print(f"{part}: kept the stored summary ({type(exc).__name__}: {exc})")
    for part, (report_fn, plot_fn) in makers.items():
        res = results[part]
        if not res:
            blocks[part] = "(not run yet: `python -m bench " + part + "`)"
            continue
        try:
            text = report_fn(res)
        except Exception as exc:  # results from an older version of the bench
            blocks[part] = f"(results unreadable: {type(exc).__name__}: {exc}; run the part again)"
            continue
        try:
            png = plot_fn(res)
            if docs:
                DOCS.mkdir(exist_ok=True)
                shutil.copy(RESULTS / png, DOCS / f"bench-{png}")
            text += f"\n\n![{part}](bench-{png})"
        except Exception as exc:  # a plot must not lose the tables
            text += f"\n\n(plot failed: {type(exc).__name__}: {exc})"
        blocks[part] = text
    if not docs:
        return
    if not DOC.exists():
        print(f"{DOC} missing: nothing to fill in")
        return
    doc = DOC.read_text()
    for part, text in blocks.items():
        pattern = re.compile(
            rf"(<!-- BEGIN GENERATED: {part} -->\n).*?(\n<!-- END GENERATED: {part} -->)", re.S
        )
        doc, n = pattern.subn(lambda m, t=text: m.group(1) + t + m.group(2), doc)
        if n == 0:
            print(f"{DOC}: no block for {part}")
    DOC.write_text(doc)
    print(f"wrote {DOC} and docs/bench-*.png")


if __name__ == "__main__":
    write()
