"""Render a soak report (scripts/soak) as an SVG plot and a Markdown section for BENCHMARKS.md.

usage: soak_render.py SOAK_JSON OUT_SVG OUT_MD

Each curve is judged by how much of its rise during the load it still holds at the end of the
cooldown: "held" = (end - baseline) / (peak - baseline). No dependencies beyond the standard
library: the SVG is written by hand (polylines, one small panel per curve).
"""
import json
import statistics
import sys

report_path, svg_path, md_path = sys.argv[1:4]
report = json.load(open(report_path))
samples = report["samples"]
settings = report["settings"]


def metric(name):
    return lambda s: s.get("metrics", {}).get(name)


# (title, unit, reader, absolute slack that still counts as "back at baseline")
CURVES = [
    ("RSS", "MiB", lambda s: s["rss_kib"] / 1024, None),
    ("heap in use", "MiB", lambda s: (metric("relaychat_heap_in_use_bytes")(s) or 0) / 2**20, None),
    ("open fds", "", lambda s: s["open_fds"], 2),
    ("runtime tasks", "", metric("relaychat_runtime_tasks"), 2),
    # The blocking pool keeps an idle thread for 10 s after its last job (argon2, trim).
    ("threads", "", lambda s: s["threads"], 2),
    ("WebSocket connections", "", metric("relaychat_connections"), 0),
    ("hub queue (events waiting)", "", metric("relaychat_hub_queue_depth"), 0),
    ("TURN allocations", "", metric("relaychat_turn_allocations_active"), 0),
]


def phase(name):
    return [s for s in samples if s["phase"] == name]


def values(reader, group):
    return [v for v in (reader(s) for s in group) if v is not None]


base, load, cool = phase("baseline"), phase("load"), phase("cooldown")
load2, cool2 = phase("load2"), phase("cooldown2")
rows, verdicts = [], []
for title, unit, reader, slack in CURVES:
    b, l, c = values(reader, base), values(reader, load + load2), values(reader, cool)
    c2 = values(reader, cool2)
    if not (b and l and c):
        continue
    baseline, peak, end = statistics.median(b), max(l), c[-1]
    end2 = c2[-1] if c2 else None
    rise = peak - baseline
    held = (end - baseline) / rise if rise > 0 else 0.0
    if slack is not None:
        ok = end <= baseline + slack and (end2 is None or end2 <= baseline + slack)
    elif end2 is not None:
        # Memory: what the first round left behind (caches, high-water marks) may stay, but a
        # second round of the same load must not add to it: at most 5 % of the rise.
        ok = end2 <= end + 0.05 * rise
    else:
        ok = held <= 0.10
    verdicts.append(ok)
    rows.append((title, unit, baseline, peak, end, end2, held, ok))

# --- SVG: one panel per curve, the load phase shaded ---------------------------------------------
W, H, PAD, COLS = 320, 170, 36, 2
panels = [(t, u, r) for t, u, r, _ in CURVES if values(r, samples)]
rows_n = (len(panels) + COLS - 1) // COLS
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * COLS}" height="{H * rows_n}" '
       f'font-family="sans-serif" font-size="11">', '<rect width="100%" height="100%" fill="white"/>']
t_max = max(s["t_s"] for s in samples) or 1
load_spans = [[s["t_s"] for s in group] for group in (load, load2) if group]
for i, (title, unit, reader) in enumerate(panels):
    ox, oy = (i % COLS) * W, (i // COLS) * H
    pts = [(s["t_s"], reader(s)) for s in samples if reader(s) is not None]
    v_max = max(v for _, v in pts) or 1
    x = lambda t: ox + PAD + (W - PAD - 10) * t / t_max
    y = lambda v: oy + H - 22 - (H - 50) * v / v_max
    for load_t in load_spans:
        svg.append(f'<rect x="{x(min(load_t)):.1f}" y="{oy + 28}" width="{x(max(load_t)) - x(min(load_t)):.1f}" '
                   f'height="{H - 50}" fill="#eef3fb"/>')
    svg.append(f'<line x1="{ox + PAD}" y1="{y(0):.1f}" x2="{ox + W - 10}" y2="{y(0):.1f}" stroke="#999"/>')
    svg.append(f'<text x="{ox + PAD}" y="{oy + 18}" font-weight="bold">{title}{" (" + unit + ")" if unit else ""}</text>')
    svg.append(f'<text x="{ox + 4}" y="{y(v_max) + 4:.1f}">{v_max:.0f}</text>')
    svg.append(f'<text x="{ox + 4}" y="{y(0) + 4:.1f}">0</text>')
    svg.append(f'<text x="{ox + W - 40}" y="{oy + H - 6}">{t_max:.0f} s</text>')
    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
    svg.append(f'<polyline points="{line}" fill="none" stroke="#1f5fbf" stroke-width="1.5"/>')
svg.append("</svg>")
open(svg_path, "w").write("\n".join(svg))

# --- Markdown ------------------------------------------------------------------------------------
last = samples[-1]["client"]
load_end = (load2 or load)[-1]["client"] if load else last
log = report.get("server_log", {})
sent, received = load_end["media_sent"], load_end["media_received"]
md = []
w = md.append
w("## Soak: churn, calls, floods and slow readers, then back to idle")
w("")
w(f"`scripts/soak`: {settings['baseline_s']} s idle, {settings['load_s']} s of load, {settings['cooldown_s']} s "
  f"after every client has gone, then the same load again for {settings.get('second_load_s', 0)} s and "
  f"another {settings['cooldown_s']} s, a sample every {settings['sample_every_s']} s (shaded: the load). The load: "
  f"{settings['sessions']} sessions held open, {settings['churn_per_s']} connects and as many disconnects per "
  f"second, {settings['calls']} calls of {settings['call_members']} (one voice room of "
  f"{settings['calls'] * settings['call_members']}, each group relaying {settings['call_payload']}-byte ChannelData "
  f"at {settings['call_packets_per_s']:g} packets/s from every member to every other through allocations made "
  f"with the credentials the server handed out, leaving and rejoining every {settings['call_hold_s']} s), "
  f"{settings['chatters']} chatters (one {settings['chat_size']}-character message every "
  f"{settings.get('chat_every_s', 1)} s each, fanned out to everyone), {settings['flooders']} flooders (2000 frames/s each, reconnecting when closed) and "
  f"{settings['slow_readers']} slow readers (4 KiB receive buffer, never read, reconnecting when dropped). "
  f"Production defaults, except the per-address caps (every client is 127.0.0.1) and the room size.")
w("")
w("![soak samples](bench/soak.svg)")
w("")
w("| curve | baseline (median) | peak under load | after round 1 | after round 2 | round 1 rise still held | back at baseline / no growth |")
w("|---|---|---|---|---|---|---|")
for title, unit, baseline, peak, end, end2, held, ok in rows:
    u = f" {unit}" if unit else ""
    second = f"{end2:.1f}{u}" if end2 is not None else "–"
    w(f"| {title} | {baseline:.1f}{u} | {peak:.1f}{u} | {end:.1f}{u} | {second} | {held * 100:.1f} % | {'yes' if ok else '**no**'} |")
w("")
w(f"Both rounds, seen by the clients: {load_end.get('held_reopened', 0)} held sessions closed by the server "
  f"(too slow to read their share of the fan-out on this shared machine) and opened again, "
  f"{load_end['churn_opened']} churn sessions opened "
  f"({load_end['churn_failed']} failed), {load_end['call_cycles']} call cycles completed "
  f"({load_end['call_failed_cycles']} failed), media {received} of {sent} relayed packets received "
  f"({(1 - received / sent) * 100 if sent else 0:.2f} % lost, including packets in flight at each leave), "
  f"{load_end['chat_sent']} chat messages sent, {load_end['flooders_closed']} flooding sessions closed by the "
  f"server, {load_end['slow_readers_dropped']} slow readers dropped by the server. Server log: "
  f"{log.get('panics', '?')} panics, {log.get('error_lines', '?')} ERROR lines.")
joins = report.get("join_latency_ms") or {}
if joins.get("count"):
    queue = [v for v in values(metric("relaychat_hub_queue_depth"), load + load2)]
    w("")
    w(f"Call setup under this load: webrtc-join → webrtc-joined p50 {joins['p50']:.1f} ms, p99 {joins['p99']:.1f} ms, "
      f"max {joins['max']:.1f} ms over {joins['count']} joins; the hub's inbound queue held at most "
      f"{max(queue) if queue else 0:.0f} events at a sample.")
    if queue and max(queue) >= 4096:
        busy = sum(1 for q in queue if q >= 4096)
        w("")
        w(f"**Finding: the hub fell behind.** In {busy} of {len(queue)} load samples its inbound queue (8192 "
          f"events) was at least half full. The hub is one task, and the churn alone asks a lot of it: every "
          f"connect and every disconnect is announced to every user (the protocol's \"X has joined.\" / "
          f"\"X has left.\"), so {settings['churn_per_s']} + {settings['churn_per_s']} per second next to "
          f"{settings['sessions']} sessions is about "
          f"{2 * settings['churn_per_s'] * settings['sessions']:,} frames per second to queue, on two cores "
          f"shared with the load generator. Nothing leaked, nothing was lost or crashed, memory and counts "
          f"came back; what suffered is latency: call setup waited behind everything else in the hub's one "
          f"queue, and joins that took over 10 s counted as failed cycles. Signaling needs its own lane "
          f"(issue 14's priority lane), and announcements of short-lived sessions could be coalesced.")
if report.get("call_errors"):
    w("")
    w("Failed call cycles by cause (N: digits): "
      + "; ".join(f"{n}× `{kind}`" for kind, n in sorted(report["call_errors"].items(), key=lambda kv: -kv[1])) + ".")
elif report.get("last_call_error"):
    w("")
    w(f"Last call error: `{report['last_call_error']}`.")
w("")
w("Criterion: counts (descriptors, tasks, threads, connections, allocations) end within a couple of "
  "their baseline after each round. Memory may keep what the first round left behind (SQLite's page "
  "cache, bounded at 2 MiB by its default `cache_size`, maps that keep their high-water capacity, "
  "allocator fragmentation), but a leak grows with the load served: the second, identical round of "
  "load must not add more than 5 % of the rise to what the first left.")
w(f"Verdict: {'every curve returned to its baseline' if verdicts and all(verdicts) else 'NOT every curve returned to its baseline'}.")
open(md_path, "w").write("\n".join(md) + "\n")
print(f"wrote {svg_path} and {md_path}", file=sys.stderr)
