#!/usr/bin/env python3
"""Turn a turnutils_uclient transcript into JSON (used by scripts/bench).

usage: uclient_result.py TRANSCRIPT LABEL EXIT_CODE RCVBUF_ERRORS_DELTA WALL_MS SERVER_CPU_TICKS
"""
import json
import re
import sys

path, label, rc, rcvbuf, wall_ms, ticks = sys.argv[1:7]
text = open(path, errors="replace").read()


def last(pattern, cast=float):
    m = re.findall(pattern, text)
    return cast(m[-1]) if m else None


sent = last(r"tot_send_msgs=(\d+), tot_recv_msgs=\d+\s*$", int) or last(r"tot_send_msgs=(\d+)", int)
recv = last(r"tot_send_msgs=\d+, tot_recv_msgs=(\d+)", int)
lost = last(r"Total lost packets (\d+)", int)
lost_pct = last(r"Total lost packets \d+ \(([\d.]+)%\)")
dropped = last(r"total send dropped (\d+)", int)
rtt = re.findall(r"Average round trip delay ([\d.]+) ms; min = ([\d.]+) ms, max = ([\d.]+) ms", text)
print(json.dumps({
    "label": label,
    "command": "turnutils_uclient -y -m 200 -n 1000 -l 200 -z 1 -c -W <secret> -u benchuser",
    "exit_code": int(rc),
    "sent": sent,
    "received": recv,
    "lost": lost,
    "lost_pct": lost_pct,
    "send_dropped": dropped,
    "rtt_avg_ms": float(rtt[-1][0]) if rtt else None,
    "rtt_max_ms": float(rtt[-1][2]) if rtt else None,
    "rcvbuf_errors": int(rcvbuf),
    "wall_s": int(wall_ms) / 1000.0,
    "server_cpu_s": int(ticks) / 100.0,
}, indent=2))
