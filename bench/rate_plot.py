#!/usr/bin/env python3
"""Plot the rate searches of bench/results.json: loss against offered packets/s, one panel per
payload size (100 B, 1200 B), one line per server. Hand-written SVG, standard library only.

usage: rate_plot.py RESULTS_JSON OUT_SVG      (render.py calls plot() itself)

Loss is on a log scale (0.001% to 100%) so the 0.1% pass line and a 30% collapse both show; a
step with no loss at all sits on the bottom line, marked "0". Filled marks passed, hollow failed.
"""
import json
import math
import sys

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 520, 300, 62, 16, 34, 42
LOSS_MIN, LOSS_MAX = 1e-5, 1.0  # ratios: 0.001% .. 100%
THRESHOLD = 1e-3
COLORS = {"relaychat": "#1f5fbf", "coturn": "#d9730d"}
SIZES = (100, 1200)


def steps_of(results, server, size):
    s = (results.get("servers") or {}).get(server) or {}
    r = s.get(f"max_rate_{size}") or {}
    return [st for st in r.get("steps") or [] if st.get("offered_pps") is not None]


def nice_ceiling(v):
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * mag:
            return m * mag
    return 10 * mag


def plot(results):
    """The SVG text for `results` (the dict render.py writes to results.json)."""
    servers = [s for s in COLORS if any(steps_of(results, s, size) for size in SIZES)]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * len(SIZES)}" height="{H + 24}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{W * len(SIZES)}" height="{H + 24}" fill="white"/>']
    for panel, size in enumerate(SIZES):
        ox = panel * W
        x_max = nice_ceiling(max([st["offered_pps"] for s in servers for st in steps_of(results, s, size)] or [1]))

        def x(v):
            return ox + PAD_L + (W - PAD_L - PAD_R) * v / x_max

        def y(loss):
            loss = min(max(loss, LOSS_MIN), LOSS_MAX)
            span = math.log10(LOSS_MAX) - math.log10(LOSS_MIN)
            return PAD_T + (H - PAD_T - PAD_B) * (math.log10(LOSS_MAX) - math.log10(loss)) / span

        out.append(f'<text x="{ox + PAD_L}" y="18" font-weight="bold">rate search, {size}-byte payload: '
                   'loss vs offered packets/s</text>')
        # Axes, grid, labels.
        for decade in range(-5, 1):
            v = 10.0 ** decade
            label = "0" if decade == -5 else f"{v * 100:g}%"
            out.append(f'<line x1="{ox + PAD_L}" y1="{y(v):.1f}" x2="{ox + W - PAD_R}" y2="{y(v):.1f}" '
                       'stroke="#e4e4e4"/>')
            out.append(f'<text x="{ox + PAD_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{label}</text>')
        out.append(f'<line x1="{ox + PAD_L}" y1="{y(THRESHOLD):.1f}" x2="{ox + W - PAD_R}" y2="{y(THRESHOLD):.1f}" '
                   'stroke="#c00" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{ox + W - PAD_R - 2}" y="{y(THRESHOLD) - 4:.1f}" text-anchor="end" fill="#c00">'
                   '0.1% (pass line)</text>')
        for i in range(0, 6):
            v = x_max * i / 5
            out.append(f'<line x1="{x(v):.1f}" y1="{H - PAD_B}" x2="{x(v):.1f}" y2="{H - PAD_B + 4}" stroke="#666"/>')
            out.append(f'<text x="{x(v):.1f}" y="{H - PAD_B + 16}" text-anchor="middle">{v:,.0f}</text>')
        out.append(f'<line x1="{ox + PAD_L}" y1="{H - PAD_B}" x2="{ox + W - PAD_R}" y2="{H - PAD_B}" stroke="#666"/>')
        out.append(f'<line x1="{ox + PAD_L}" y1="{PAD_T}" x2="{ox + PAD_L}" y2="{H - PAD_B}" stroke="#666"/>')
        out.append(f'<text x="{ox + (W + PAD_L) / 2:.0f}" y="{H - 6}" text-anchor="middle">'
                   'offered packets/s (all clients)</text>')
        # One line per server, steps in order of offered rate.
        for s in servers:
            steps = sorted(steps_of(results, s, size), key=lambda st: st["offered_pps"])
            if not steps:
                continue
            color = COLORS[s]
            pts = " ".join(f'{x(st["offered_pps"]):.1f},{y(st.get("loss_ratio") or 0):.1f}' for st in steps)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>')
            for st in steps:
                fill = color if st.get("passed") else "white"
                out.append(f'<circle cx="{x(st["offered_pps"]):.1f}" cy="{y(st.get("loss_ratio") or 0):.1f}" r="3.5" '
                           f'fill="{fill}" stroke="{color}" stroke-width="1.5">'
                           f'<title>{s}: {st["offered_pps"]:,.0f} pps offered, loss {100 * (st.get("loss_ratio") or 0):.3f}%'
                           f', RcvbufErrors {(st.get("udp") or {}).get("rcvbuf_errors", "n/a")}</title></circle>')
    # Legend.
    for i, s in enumerate(servers):
        lx = PAD_L + i * 120
        out.append(f'<line x1="{lx}" y1="{H + 12}" x2="{lx + 24}" y2="{H + 12}" stroke="{COLORS[s]}" stroke-width="2"/>')
        out.append(f'<text x="{lx + 30}" y="{H + 16}">{s}</text>')
    out.append(f'<text x="{PAD_L + 120 * len(servers)}" y="{H + 16}">filled: step passed, hollow: failed</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    results_path, svg_path = sys.argv[1:3]
    with open(results_path) as f:
        svg = plot(json.load(f))
    with open(svg_path, "w") as f:
        f.write(svg)
    print(f"wrote {svg_path}", file=sys.stderr)
