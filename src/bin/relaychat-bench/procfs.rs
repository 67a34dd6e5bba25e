//! Readings from /proc: a server's CPU time and resident memory, and the kernel's UDP counters
//! (`RcvbufErrors` is the number of datagrams dropped because a socket's receive buffer was full;
//! it is host-wide, so it counts the load generator's sockets, and anything else running on the
//! machine, as well as the server's), and the drops at the server's own UDP sockets alone.

use serde::Serialize;

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on every Linux build).
const USER_HZ: f64 = 100.0;

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds consumed so far by `pid` (all its threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Host-wide UDP counters from /proc/net/snmp.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct UdpCounters {
    pub in_datagrams: u64,
    pub in_errors: u64,
    pub rcvbuf_errors: u64,
    pub sndbuf_errors: u64,
}

impl UdpCounters {
    pub fn read() -> Option<UdpCounters> {
        let s = std::fs::read_to_string("/proc/net/snmp").ok()?;
        let mut lines = s.lines().filter(|l| l.starts_with("Udp:"));
        let names: Vec<&str> = lines.next()?.split_whitespace().collect();
        let values: Vec<&str> = lines.next()?.split_whitespace().collect();
        let get = |name: &str| -> u64 {
            names
                .iter()
                .position(|n| *n == name)
                .and_then(|i| values.get(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Some(UdpCounters {
            in_datagrams: get("InDatagrams"),
            in_errors: get("InErrors"),
            rcvbuf_errors: get("RcvbufErrors"),
            sndbuf_errors: get("SndbufErrors"),
        })
    }

    pub fn since(&self, before: &UdpCounters) -> UdpCounters {
        UdpCounters {
            in_datagrams: self.in_datagrams.saturating_sub(before.in_datagrams),
            in_errors: self.in_errors.saturating_sub(before.in_errors),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(before.rcvbuf_errors),
            sndbuf_errors: self.sndbuf_errors.saturating_sub(before.sndbuf_errors),
        }
    }
}

/// Datagrams dropped so far at the UDP sockets `pid` holds (listener and relay sockets): the
/// `drops` column of /proc/<pid>/net/udp{,6} for the socket inodes among its descriptors.
/// Unlike `RcvbufErrors` this leaves out the load generator and everything else on the host.
pub fn socket_drops(pid: u32) -> Option<u64> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut drops = 0;
    for table in ["udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            if f.len() >= 13 && inodes.contains(f[9]) {
                drops += f[f.len() - 1].parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(drops)
}

/// A point-in-time reading of the server process and the host UDP counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub cpu_s: Option<f64>,
    pub rss_kib: Option<u64>,
    pub udp: UdpCounters,
    pub server_socket_drops: Option<u64>,
}

impl Snapshot {
    pub fn take(pid: Option<u32>) -> Snapshot {
        Snapshot {
            cpu_s: pid.and_then(cpu_seconds),
            rss_kib: pid.and_then(rss_kib),
            udp: UdpCounters::read().unwrap_or_default(),
            server_socket_drops: pid.and_then(socket_drops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).is_some());
        assert!(UdpCounters::read().is_some());
    }

    #[test]
    fn counts_drops_at_own_sockets_only() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&rx).set_recv_buffer_size(1).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let pid = std::process::id();
        let before = socket_drops(pid).unwrap();
        // The smallest receive buffer holds a datagram or two; the rest are dropped at `rx`.
        for _ in 0..50 {
            tx.send_to(&[0u8; 1000], rx.local_addr().unwrap()).unwrap();
        }
        let after = socket_drops(pid).unwrap();
        assert!(after - before >= 40, "drops seen at our socket: {}", after - before);
    }
}
