#!/usr/bin/env python3
"""Turns the benchmark results in target/ into the tables of BENCHMARKS.md and the chart
benches/chart.svg. Standard library only."""
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent
target = root / "target"


def load(name):
    path = target / name
    return json.loads(path.read_text()) if path.exists() else []


rows = load("interleaved-metrics-off.json") + load("interleaved-metrics-on.json")
contention = load("contention.json")
instructions = load("instructions-metrics-off.json") + load("instructions-metrics-on.json")
latency = load("latency.json")
compile_time = json.loads((target / "compile_time.json").read_text()) if (target / "compile_time.json").exists() else None

out = []
if rows:
    out.append("| database | metrics | variant | µs / transaction | cost vs baseline (median) | IQR |")
    out.append("|---|---|---|---:|---:|---|")
    for r in rows:
        base = "nested (c)" if r["variant"].startswith("nested") else "(c)"
        out.append(
            f"| {r['target']} | {r['metrics']} | {r['variant']} | {r['micros']:.1f} | "
            f"×{r['ratio']:.3f} of {base} | {r['q1']:.3f}–{r['q3']:.3f} |"
        )
    out.append("")
if instructions:
    base = {(r["metrics"], r["variant"]): r["instructions"] for r in instructions}
    out.append("| variant | instructions / transaction (metrics off) | vs baseline | metrics on | vs baseline |")
    out.append("|---|---:|---:|---:|---:|")
    for r in [r for r in instructions if r["metrics"] == "off"]:
        b = "nested_c_sea_orm_begin" if r["variant"].startswith("nested") else "c_sea_orm_begin_commit"
        on = base.get(("on", r["variant"]))
        out.append(
            f"| {r['variant']} | {r['instructions']} | ×{r['instructions'] / base[('off', b)]:.3f} | "
            f"{on} | ×{on / base[('on', b)]:.3f} |"
        )
    out.append("")
if contention:
    out.append("| scenario | strategy | successful ops/s | failed |")
    out.append("|---|---|---:|---:|")
    for r in contention:
        spread = f" ({r['min']:.0f}–{r['max']:.0f})" if "min" in r else ""
        out.append(f"| {r['scenario']} | {r['strategy']} | {r['ops_per_sec']:.0f}{spread} | {r['failure_rate'] * 100:.2f}% |")
    out.append("")
if compile_time:
    out.append("| crate | build time (s) |")
    out.append("|---|---:|")
    out.append(f"| 200 annotated functions | {compile_time['annotated_s']:.2f} |")
    out.append(f"| the same 200 with the closure form | {compile_time['closure_s']:.2f} |")
    out.append(f"| ratio | ×{compile_time['ratio']:.3f} |")
    out.append(f"| safe-db-macros alone | {compile_time['macro_crate_s']:.2f} |")
if latency:
    by = {(r["database"], r["variant"]): r for r in latency}
    out.append("| database | case | safe-db: round trips / op/s | SeaORM by hand | raw sqlx | safe-db vs SeaORM |")
    out.append("|---|---|---|---|---|---:|")
    for r in latency:
        case, impl = r["variant"].split("/")
        if impl != "safe-db":
            continue
        base_case = "nested" if case.startswith("nested") else case
        sea = by.get((r["database"], base_case + "/sea-orm"))
        raw = by.get((r["database"], base_case + "/sqlx"))
        cell = lambda x: f"{x['round_trips']:.0f} / {x['ops_per_sec']:.0f}" if x else "—"
        ratio = f"×{r['ops_per_sec'] / sea['ops_per_sec']:.2f}" if sea else "—"
        out.append(f"| {r['database']} | {case} | {cell(r)} | {cell(sea)} | {cell(raw)} | {ratio} |")
    out.append("")
(target / "benchmarks.md").write_text("\n".join(out) + "\n")
print("\n".join(out))

# The chart: instructions per transaction relative to hand-written SeaORM (= 1), counted
# by callgrind (exact, unlike wall-clock time on a shared machine).
if instructions:
    counts = {(r["metrics"], r["variant"]): r["instructions"] for r in instructions}
    bars = [
        ("(a) #[safe_db_operation]", "a_annotated", "c_sea_orm_begin_commit"),
        ("(b) closure form", "b_closure_form", "c_sea_orm_begin_commit"),
        ("(c) SeaORM begin/commit", "c_sea_orm_begin_commit", "c_sea_orm_begin_commit"),
        ("(d) SeaORM transaction()", "d_sea_orm_transaction_closure", "c_sea_orm_begin_commit"),
        ("(e) raw sqlx", "e_raw_sqlx", "c_sea_orm_begin_commit"),
        ("nested (a) vs nested (c)", "nested_a_annotated", "nested_c_sea_orm_begin"),
    ]
    width, row_h, left, top = 760, 34, 210, 60
    height = top + row_h * len(bars) + 60
    scale = (width - left - 80) / 1.2
    x = lambda v: left + v * scale
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">CPU instructions per write transaction (SQLite in memory), relative to hand-written SeaORM</text>',
           f'<text x="{width / 2}" y="40" text-anchor="middle" fill="#555">counted by callgrind; dark: metrics off, light: metrics compiled in</text>']
    for tick in [0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2]:
        svg.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top - 6}" y2="{height - 50}" stroke="{"#000" if tick == 1.0 else "#ddd"}"/>')
        svg.append(f'<text x="{x(tick):.1f}" y="{height - 34}" text-anchor="middle">×{tick:.1f}</text>')
    for n, (label, v, b) in enumerate(bars):
        y0 = top + n * row_h
        svg.append(f'<text x="{left - 8}" y="{y0 + 17}" text-anchor="end">{label}</text>')
        for k, (metrics, color) in enumerate([("off", "#1b7f5b"), ("on", "#8fcfb0")]):
            if (metrics, v) not in counts:
                continue
            ratio = counts[(metrics, v)] / counts[(metrics, b)]
            svg.append(f'<rect x="{left}" y="{y0 + 4 + k * 12}" width="{ratio * scale:.1f}" height="11" fill="{color}"/>')
            svg.append(f'<text x="{x(ratio) + 4:.1f}" y="{y0 + 14 + k * 12}" font-size="10">×{ratio:.3f}</text>')
    svg.append("</svg>")
    (root / "benches" / "chart.svg").write_text("\n".join(svg) + "\n")

# The latency chart: round trips per operation over the delayed link, by case.
if latency:
    rows = []
    for r in latency:
        case, impl = r["variant"].split("/")
        rows.append((r["database"], case, impl, r["round_trips"], r["ops_per_sec"]))
    colors = {"safe-db": "#1b7f5b", "sea-orm": "#c77c1e", "sqlx": "#7a7a7a"}
    groups = []
    for db, case, impl, trips, ops in rows:
        key = (db, case)
        if key not in [g[0] for g in groups]:
            groups.append((key, []))
        [g for g in groups if g[0] == key][0][1].append((impl, trips, ops))
    width, left, top, bar_h = 780, 260, 60, 11
    height = top + sum(len(g[1]) * (bar_h + 2) + 10 for g in groups) + 50
    scale = (width - left - 90) / 8
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">Round trips per one-statement operation, 1 ms each way (counted by a proxy)</text>',
           f'<text x="{width / 2}" y="40" text-anchor="middle" fill="#555">green: safe-db, orange: SeaORM by hand, grey: raw sqlx; the label is operations per second</text>']
    y = top
    for (db, case), impls in groups:
        svg.append(f'<text x="{left - 8}" y="{y + 10 + (len(impls) - 1) * (bar_h + 2) / 2}" text-anchor="end">{db}: {case}</text>')
        for impl, trips, ops in impls:
            svg.append(f'<rect x="{left}" y="{y}" width="{trips * scale:.1f}" height="{bar_h}" fill="{colors.get(impl, "#000")}"/>')
            svg.append(f'<text x="{left + trips * scale + 4:.1f}" y="{y + 9}" font-size="10">{trips:.0f} ({ops:.0f}/s)</text>')
            y += bar_h + 2
        y += 10
    svg.append("</svg>")
    (root / "benches" / "latency.svg").write_text("\n".join(svg) + "\n")
