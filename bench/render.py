#!/usr/bin/env python3
"""Combine the JSON reports of one scripts/bench run into bench/results.json and BENCHMARKS.md.

usage: render.py JSON_DIR RESULTS_JSON BENCHMARKS_MD

The hand-written analysis (where time goes, where coturn wins and why) lives in
bench/commentary.md and is included verbatim, so regenerating the tables never loses it.
"""
import json
import os
import sys

src, results_path, md_path = sys.argv[1:4]
here = os.path.dirname(os.path.abspath(__file__))


def load(name):
    p = os.path.join(src, name + ".json")
    if not os.path.exists(p):
        return None
    try:
        with open(p) as f:
            return json.load(f)
    except ValueError:
        return None


servers = [s for s in ("relaychat", "coturn") if load(s + "-audio") or load(s + "-max-100")]
results = {
    "machine": {"start": load("machine-start"), "end": load("machine-end")},
    "generator_ceiling": {"echo_100": load("echo-100"), "echo_1200": load("echo-1200")},
    "servers": {
        s: {
            "max_rate_100": load(s + "-max-100"),
            "max_rate_1200": load(s + "-max-1200"),
            "audio_100x50": load(s + "-audio"),
            "rss_1000_allocations": load(s + "-rss"),
            "allocation_rate": load(s + "-alloc"),
            "turnutils_uclient": load(s + "-uclient"),
        }
        for s in servers
    },
    "signaling": load("relaychat-signaling"),
    "original_signaling": load("original-signaling"),
    # relaychat with RELAYCHAT_TURN_HANDOFF=off (every datagram through the kernel), audio-like.
    "relaychat_handoff_off_audio": load("relaychat-kpath-audio"),
}
sys.path.insert(0, here)
import cluster_render  # noqa: E402

cluster_entry = cluster_render.collect(src)
cluster_ran = bool(cluster_entry["report"] or cluster_entry["skipped"])
if cluster_ran:
    results["cluster"] = cluster_entry
elif os.path.exists(results_path):
    # Not part of this run (--no-cluster): keep the last measured one, as its section is kept.
    with open(results_path) as f:
        try:
            previous_cluster = json.load(f).get("cluster")
        except ValueError:
            previous_cluster = None
    if previous_cluster:
        results["cluster"] = previous_cluster
with open(results_path, "w") as f:
    json.dump(results, f, indent=2)
    f.write("\n")

# The plot of every rate-search step (loss vs offered rate), next to results.json.
import rate_plot  # noqa: E402

rate_svg = os.path.join(os.path.dirname(os.path.abspath(results_path)), "rate-search.svg")
with open(rate_svg, "w") as f:
    f.write(rate_plot.plot(results))


# --- helpers ---------------------------------------------------------------------------------
def get(d, *path):
    for k in path:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def fmt(v, digits=0, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        s = f"{v:,.{digits}f}"
    else:
        s = f"{v:,}"
    return s + unit


def ratio(a, b):
    if a is None or b in (None, 0):
        return "n/a"
    return f"{a / b:.2f}x"


def srv(name, *path):
    return get(results["servers"].get(name), *path)


def max_pps(name, size):
    return srv(name, f"max_rate_{size}", "max_sustained", "delivered_pps")


def audio(name, key):
    return get((srv(name, "audio_100x50", "steps") or [None])[0], key)


def audio_lat(name, key):
    return get((srv(name, "audio_100x50", "steps") or [None])[0], "latency", key)


def rss_mib(name):
    r = srv(name, "rss_1000_allocations")
    a, b = get(r, "server_rss_allocated_kib"), get(r, "server_rss_before_kib")
    return (a / 1024.0) if a is not None else None, get(r, "server_rss_per_allocation_kib"), b


def cpu_per_million(name, which):
    if which == "audio":
        return audio(name, "server_cpu_s_per_million")
    return srv(name, f"max_rate_{which}", "max_sustained", "server_cpu_s_per_million")


def total_rcvbuf(name, key):
    r = srv(name, key)
    if r is None:
        return None
    return sum(get(s, "udp", "rcvbuf_errors") or 0 for s in r.get("steps", []))


def total_own_drops(name, key):
    """Drops at the server's own UDP sockets over all steps (None for results from before the
    bench read them)."""
    steps = (srv(name, key) or {}).get("steps") or []
    own = [s.get("server_socket_drops") for s in steps]
    if not own or any(v is None for v in own):
        return None
    return sum(own)


def own_drops_at_shared_rates(key):
    """Drops at each server's own sockets summed over the offered rates both servers' searches
    ran (the searches step differently once one passes a rate the other fails, so the totals
    above also count rates only one of them was offered); (relaychat, coturn, rates)."""
    steps = {name: {s.get("offered_pps"): s.get("server_socket_drops")
                    for s in ((srv(name, key) or {}).get("steps") or [])}
             for name in ("relaychat", "coturn")}
    shared = sorted(set(steps["relaychat"]) & set(steps["coturn"]) - {None})
    if not shared or any(steps[n][r] is None for n in steps for r in shared):
        return None, None, []
    return (sum(steps["relaychat"][r] for r in shared), sum(steps["coturn"][r] for r in shared), shared)


rc, co = "relaychat", "coturn"
m0 = results["machine"]["start"] or {}
m1 = results["machine"]["end"] or {}
lines = []
w = lines.append

w("# Benchmarks: relaychat vs coturn")
w("")
w("Generated by `scripts/bench` (raw numbers: [bench/results.json](bench/results.json)). "
  "Both servers ran side by side in one run on the same machine, driven by the same load "
  "generator (`relaychat-bench`). Do not edit the tables by hand: rerun the script.")
w("")
w(f"- Run: {m0.get('time_utc', 'n/a')} to {m1.get('time_utc', 'n/a')}, commit `{m0.get('git_commit')}`")
w(f"- Machine: {m0.get('cpus')} x {m0.get('cpu_model')}, {m0.get('memory_gib')} GiB, Linux {m0.get('kernel')}; "
  f"{m0.get('rustc')}; coturn {m0.get('coturn')}")
w(f"- Load average at start {' '.join(m0.get('loadavg') or [])}, at end {' '.join(m1.get('loadavg') or [])} "
  "(the generator and both servers share 2 cores; other work on the machine shows up as noise)")
w(f"- Kernel socket buffers: rmem_default {m0.get('net.core.rmem_default')}, rmem_max "
  f"{m0.get('net.core.rmem_max')}, wmem_default {m0.get('net.core.wmem_default')}, wmem_max "
  f"{m0.get('net.core.wmem_max')} bytes")
w("")

w("## TURN relay")
w("")
w("| metric | relaychat | coturn | relaychat / coturn | better |")
w("|---|---:|---:|---:|---|")
for size in (100, 1200):
    a, b = max_pps(rc, size), max_pps(co, size)
    w(f"| (a) highest rate sustained 10 s with <0.1% loss, {size}-byte payload (packets/s delivered end to end) "
      f"| {fmt(a)} | {fmt(b)} | {ratio(a, b)} | higher |")
for size in (100, 1200):
    a = srv(rc, f"max_rate_{size}", "max_sustained", "generator_cpu_s")
    b = srv(co, f"max_rate_{size}", "max_sustained", "generator_cpu_s")
    w(f"| ... load generator CPU during that {size}-byte step (s of 10 s on its one thread; under 10 = it had headroom) "
      f"| {fmt(a, 2)} | {fmt(b, 2)} | | |")
for key, label in (("p50_us", "p50"), ("p99_us", "p99"), ("max_us", "max")):
    a, b = audio_lat(rc, key), audio_lat(co, key)
    w(f"| (b) one-way latency {label}, 100 pairs x 50 pkt/s x 100 B (us) | {fmt(a)} | {fmt(b)} | {ratio(a, b)} | lower |")
a, b = audio(rc, "loss_ratio"), audio(co, "loss_ratio")
w(f"| (b) loss at that load | {fmt(a * 100 if a is not None else None, 3, '%')} | "
  f"{fmt(b * 100 if b is not None else None, 3, '%')} | | lower |")
for which, label in (("audio", "at 100 pairs x 50 pkt/s"), (100, "at the highest passing 100-byte rate"),
                     (1200, "at the highest passing 1200-byte rate")):
    a, b = cpu_per_million(rc, which), cpu_per_million(co, which)
    w(f"| (c) server CPU seconds per million relayed packets, {label} | {fmt(a, 2)} | {fmt(b, 2)} | {ratio(a, b)} | lower |")
kpath = (results.get("relaychat_handoff_off_audio") or {}).get("steps") or [None]
for key, label in (("server_cpu_s_per_million", "(c) server CPU seconds per million relayed packets, at 100 pairs x 50 pkt/s, "
                    "relaychat with its in-process relay-to-relay hand-off off (RELAYCHAT_TURN_HANDOFF=off: through the "
                    "kernel, as to a peer outside the server)"),
                   ("p50_us", "(b) one-way latency p50, 100 pairs x 50 pkt/s x 100 B, relaychat with the hand-off off (us)")):
    a = get(kpath[0], key) if key != "p50_us" else get(kpath[0], "latency", key)
    b = audio(co, key) if key != "p50_us" else audio_lat(co, key)
    w(f"| {label} | {fmt(a, 2 if key != 'p50_us' else 0)} | {fmt(b, 2 if key != 'p50_us' else 0)} | {ratio(a, b)} | lower |")
(ra, rpa, rb), (ca, cpa, cb) = rss_mib(rc), rss_mib(co)
w(f"| (d) server RSS with 1000 allocations (MiB) | {fmt(ra, 1)} | {fmt(ca, 1)} | {ratio(ra, ca)} | lower |")
w(f"| (d) RSS growth per allocation (KiB) | {fmt(rpa, 1)} | {fmt(cpa, 1)} | {ratio(rpa, cpa)} | lower |")
a, b = srv(rc, "allocation_rate", "allocations_per_s"), srv(co, "allocation_rate", "allocations_per_s")
w(f"| (e) allocations per second, REST auth, 16 clients at once (401, signed Allocate, Refresh 0) "
  f"| {fmt(a)} | {fmt(b)} | {ratio(a, b)} | higher |")
a, b = srv(rc, "allocation_rate", "cycle_latency", "p99_us"), srv(co, "allocation_rate", "cycle_latency", "p99_us")
w(f"| (e) allocation cycle p99 (us) | {fmt(a)} | {fmt(b)} | {ratio(a, b)} | lower |")
for key, label in (("max_rate_100", "100-byte rate search"), ("max_rate_1200", "1200-byte rate search"),
                   ("audio_100x50", "audio-like load")):
    a, b = total_rcvbuf(rc, key), total_rcvbuf(co, key)
    w(f"| kernel `RcvbufErrors` during the {label} (host-wide, all steps) | {fmt(a)} | {fmt(b)} | | lower |")
    a, b = total_own_drops(rc, key), total_own_drops(co, key)
    w(f"| ... UDP drops at the server's own sockets (listener + relay sockets; the rest is the generator and the host) | {fmt(a)} | {fmt(b)} | | lower |")
    if key.startswith("max_rate"):
        a, b, shared = own_drops_at_shared_rates(key)
        rates = ", ".join(fmt(r) for r in shared)
        w(f"| ... of those, at the offered rates both searches ran ({rates or 'none'} packets/s) | {fmt(a)} | {fmt(b)} | | lower |")
ua, ub = srv(rc, "turnutils_uclient"), srv(co, "turnutils_uclient")
w(f"| `turnutils_uclient -y -m 200 -n 1000 -l 200 -z 1 -c` loss | {fmt(get(ua, 'lost'))} "
  f"({fmt(get(ua, 'lost_pct'), 3, '%')}) | {fmt(get(ub, 'lost'))} ({fmt(get(ub, 'lost_pct'), 3, '%')}) | | lower |")
w(f"| ... `RcvbufErrors` during that run | {fmt(get(ua, 'rcvbuf_errors'))} | {fmt(get(ub, 'rcvbuf_errors'))} | | lower |")
w(f"| ... average / max round trip (ms) | {fmt(get(ua, 'rtt_avg_ms'), 2)} / {fmt(get(ua, 'rtt_max_ms'))} "
  f"| {fmt(get(ub, 'rtt_avg_ms'), 2)} / {fmt(get(ub, 'rtt_max_ms'))} | | lower |")
w(f"| ... server CPU seconds for the run | {fmt(get(ua, 'server_cpu_s'), 2)} | {fmt(get(ub, 'server_cpu_s'), 2)} "
  f"| {ratio(get(ua, 'server_cpu_s'), get(ub, 'server_cpu_s'))} | lower |")
w("")

e100 = get(results["generator_ceiling"]["echo_100"], "max_sustained")
e1200 = get(results["generator_ceiling"]["echo_1200"], "max_sustained")
w("### The load generator's own ceiling")
w("")
w("The same generator (same thread count, same pacing and receive code) against a trivial UDP echo "
  "server (`relaychat-bench udp-echo`, one socket, one task). Per delivered packet the generator does the "
  "same work in both cases (one send, one receive); an echoed packet costs the echo server one receive and "
  "one send, a relayed TURN packet costs the relay two of each. If the echo ceiling is above the relays' "
  "ceilings, the relays, not the generator, set those.")
best_relay = max([v for v in (max_pps(rc, 100), max_pps(co, 100)) if v is not None] or [0])
e100v = get(e100, "delivered_pps")
if e100v and best_relay:
    verdict = "above" if e100v > best_relay * 1.05 else "not clearly above"
    w("")
    w(f"Here the 100-byte echo ceiling ({fmt(e100v)} packets/s) is {verdict} the best relay ceiling "
      f"({fmt(best_relay)} packets/s).")
w("")
w("| payload | highest rate with <0.1% loss (packets/s) | round trip p50 / p99 (us) | generator CPU s per 10 s step |")
w("|---|---:|---:|---:|")
for label, e in (("100 B", e100), ("1200 B", e1200)):
    w(f"| {label} | {fmt(get(e, 'delivered_pps'))} | {fmt(get(e, 'latency', 'p50_us'))} / "
      f"{fmt(get(e, 'latency', 'p99_us'))} | {fmt(get(e, 'generator_cpu_s'), 2)} |")
w("")

sig = results["signaling"]
w("## Signaling")
w("")
if sig:
    f = sig.get("fanout") or {}
    w("| metric | value |")
    w("|---|---:|")
    w(f"| idle WebSocket sessions held (target {fmt(sig.get('sessions_target'))}) | "
      f"{fmt(sig.get('sessions_alive_after_hold'))} alive of {fmt(sig.get('sessions_connected'))} connected "
      f"({fmt(sig.get('sessions_failed'))} failed) |")
    per = sig.get("server_rss_per_session_kib")
    tot = sig.get("server_rss_sessions_kib")
    w(f"| server RSS with all sessions (MiB) | {fmt(tot / 1024.0 if tot else None, 1)} |")
    w(f"| memory per session (RSS delta over the fresh server / sessions, KiB) | {fmt(per, 1)} |")
    w(f"| memory per session added by the idle ramp (KiB) | {fmt(sig.get('server_rss_per_added_session_kib'), 1)} |")
    w(f"| time to open them (every join is broadcast to all present: ~N^2/2 frames) (s) | "
      f"{fmt(sig.get('sessions_ramp_s'), 1)} + {fmt(sig.get('settle_s'), 1)} to settle |")
    w(f"| chat fan-out: deliveries per second to {fmt(f.get('listeners'))} listeners "
      f"({fmt(f.get('senders'))} closed-loop senders) | {fmt(f.get('deliveries_per_s'))} |")
    w(f"| ... messages per second / delivered of expected | {fmt(f.get('messages_per_s'), 1)} / "
      f"{fmt(f.get('deliveries'))} of {fmt(f.get('expected_deliveries'))} |")
    w(f"| ... server CPU / benchmark CPU during the fan-out (s, over {fmt(f.get('seconds'), 1)} s) | "
      f"{fmt(f.get('server_cpu_s'), 2)} / {fmt(f.get('generator_cpu_s'), 2)} |")
    w(f"| ... sender's own copy back p50 / p99 (ms) | {fmt((get(f, 'sender_echo', 'p50_us') or 0) / 1000, 1)} / "
      f"{fmt((get(f, 'sender_echo', 'p99_us') or 0) / 1000, 1)} |")
    w(f"| offer relay latency (one way) p50 / p99 under that fan-out (ms) | "
      f"{fmt((get(sig, 'offer_one_way', 'p50_us') or 0) / 1000, 2)} / {fmt((get(sig, 'offer_one_way', 'p99_us') or 0) / 1000, 2)} |")
    w(f"| offer -> answer round trip p50 / p99 (ms) ({fmt(sig.get('offers_lost'))} unanswered) | "
      f"{fmt((get(sig, 'offer_answer_rtt', 'p50_us') or 0) / 1000, 2)} / {fmt((get(sig, 'offer_answer_rtt', 'p99_us') or 0) / 1000, 2)} |")
    w(f"| connect -> `webrtc-joined` p50 / p99 (ms), 1000+ users online | "
      f"{fmt((get(sig, 'connect_to_webrtc_joined', 'p50_us') or 0) / 1000, 2)} / "
      f"{fmt((get(sig, 'connect_to_webrtc_joined', 'p99_us') or 0) / 1000, 2)} |")
else:
    w("Not run (`--no-signaling`), or it failed: see the script output.")
w("")

# The same fan-out against the Node original (bench/original_fanout.sh), right after relaychat's.
orig = results["original_signaling"]
w("### Chat fan-out side by side with the Node original")
w("")
if not sig:
    w("Not run: relaychat's signaling part did not run.")
elif not orig:
    w("The Node original (js-chat-server) did not run: its part failed, see the script output.")
elif orig.get("skipped"):
    w(f"The Node original (js-chat-server) did not run: {orig['skipped']}.")
else:
    f = sig.get("fanout") or {}
    o = orig.get("fanout") or {}

    def ratio(a, b):
        return f"{a / b:.1f}x" if a and b else "n/a"

    def per_delivery_us(r):
        cpu, n = r.get("server_cpu_s"), r.get("deliveries")
        return cpu * 1e6 / n if cpu and n else None

    w(f"Same generator, same load: {fmt(o.get('listeners'))} sessions, {fmt(o.get('senders'))} closed-loop "
      "senders, 5 s, one server after the other (the other idle); settings that would refuse "
      "one address's 1,000 sessions raised on both (bench/original_fanout.sh says which).")
    w("")
    w("| metric | relaychat | js-chat-server (Node) | relaychat / Node |")
    w("|---|---:|---:|---:|")
    w(f"| deliveries per second | {fmt(f.get('deliveries_per_s'))} | {fmt(o.get('deliveries_per_s'))} | "
      f"{ratio(f.get('deliveries_per_s'), o.get('deliveries_per_s'))} |")
    w(f"| messages per second | {fmt(f.get('messages_per_s'), 1)} | {fmt(o.get('messages_per_s'), 1)} | "
      f"{ratio(f.get('messages_per_s'), o.get('messages_per_s'))} |")
    w(f"| delivered of expected | {fmt(f.get('deliveries'))} of {fmt(f.get('expected_deliveries'))} | "
      f"{fmt(o.get('deliveries'))} of {fmt(o.get('expected_deliveries'))} | |")
    w(f"| server CPU s / generator CPU s | {fmt(f.get('server_cpu_s'), 2)} / {fmt(f.get('generator_cpu_s'), 2)} | "
      f"{fmt(o.get('server_cpu_s'), 2)} / {fmt(o.get('generator_cpu_s'), 2)} | |")
    pr, po = per_delivery_us(f), per_delivery_us(o)
    w(f"| server CPU per delivery (us) | {fmt(pr, 2)} | {fmt(po, 2)} | {ratio(po, pr)} less |")
    w(f"| sender's own copy back p50 / p99 (ms) | {fmt((get(f, 'sender_echo', 'p50_us') or 0) / 1000, 1)} / "
      f"{fmt((get(f, 'sender_echo', 'p99_us') or 0) / 1000, 1)} | "
      f"{fmt((get(o, 'sender_echo', 'p50_us') or 0) / 1000, 1)} / {fmt((get(o, 'sender_echo', 'p99_us') or 0) / 1000, 1)} | |")
w("")

commentary = os.path.join(here, "commentary.md")
if os.path.exists(commentary):
    with open(commentary) as f:
        w(f.read().rstrip())
    w("")

w("## Every step of the rate searches")
w("")
w("A step holds a per-client rate for 10 s over 50 client pairs (100 allocations); it passes when "
  "under 0.1% of the packets are lost and the generator kept its schedule. The search doubles the rate "
  "until a step fails, then bisects.")
w("")
w("![loss against offered packets/s, every step of both searches](bench/rate-search.svg)")
w("")
w("| server | payload | rate/client | offered pps | delivered pps | loss | p50 / p99 / max (us) | server CPU s | RcvbufErrors (host) / at the server's sockets | result |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for s in servers:
    for size in (100, 1200):
        for st in srv(s, f"max_rate_{size}", "steps") or []:
            lat = st.get("latency", {})
            w(f"| {s} | {size} | {fmt(st.get('rate_per_client'))} | {fmt(st.get('offered_pps'))} | "
              f"{fmt(st.get('delivered_pps'))} | {fmt(st.get('loss_ratio', 0) * 100, 3, '%')} | "
              f"{fmt(lat.get('p50_us'))} / {fmt(lat.get('p99_us'))} / {fmt(lat.get('max_us'))} | "
              f"{fmt(st.get('server_cpu_s'), 2)} | {fmt(get(st, 'udp', 'rcvbuf_errors'))} / {fmt(st.get('server_socket_drops'))} | "
              f"{'pass' if st.get('passed') else 'fail: ' + str(st.get('failed_on'))} |")
w("")

method = os.path.join(here, "method.md")
if os.path.exists(method):
    with open(method) as f:
        w(f.read().rstrip())
    w("")

# The cluster section: this run's, or (not run this time) the one already in BENCHMARKS.md.
previous_md = open(md_path).read() if os.path.exists(md_path) else ""
if cluster_ran:
    lines.extend(cluster_render.section(cluster_entry))
else:
    a, b = previous_md.find(cluster_render.START), previous_md.find(cluster_render.END)
    if 0 <= a < b:
        w(previous_md[a:b + len(cluster_render.END)])
    else:
        lines.extend(cluster_render.section(None))
w("")

# The soak section (scripts/soak) comes from another run: keep it as it is.
if os.path.exists(md_path):
    with open(md_path) as f:
        previous = f.read()
    start, end = previous.find("<!-- soak:start -->"), previous.find("<!-- soak:end -->")
    if 0 <= start < end:
        w(previous[start:end + len("<!-- soak:end -->")])
        w("")

with open(md_path, "w") as f:
    f.write("\n".join(lines))
print(f"wrote {results_path} and {md_path}", file=sys.stderr)
