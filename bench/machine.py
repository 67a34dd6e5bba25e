#!/usr/bin/env python3
"""Print what the benchmark ran on, as JSON (used by scripts/bench at start and end)."""
import json
import os
import platform
import subprocess
import time


def cmd(*args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return None


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def sysctl(name):
    try:
        return open("/proc/sys/" + name.replace(".", "/")).read().strip()
    except OSError:
        return None


print(json.dumps({
    "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "cpus": os.cpu_count(),
    "cpu_model": cpu_model(),
    "kernel": platform.release(),
    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    "loadavg": open("/proc/loadavg").read().split()[:3],
    "rustc": cmd("rustc", "--version"),
    "coturn": ((cmd("turnserver", "--version") or "").splitlines() or [None])[0],
    "git_commit": cmd("git", "rev-parse", "--short", "HEAD"),
    "net.core.rmem_default": sysctl("net.core.rmem_default"),
    "net.core.rmem_max": sysctl("net.core.rmem_max"),
    "net.core.wmem_default": sysctl("net.core.wmem_default"),
    "net.core.wmem_max": sysctl("net.core.wmem_max"),
}, indent=2))
