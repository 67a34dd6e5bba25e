//! Sending a batch to one destination: [`BatchSender::send_many`] cuts it into runs of
//! equal-size datagrams (the last of a run may be shorter), sends each run of two or more as one
//! UDP GSO `sendmsg` (the kernel cuts it back into the datagrams), and what is left between runs
//! with `sendmmsg`, in order. A datagram the kernel refuses is counted in [`SendOutcome::failed`]
//! and skipped; the rest of the batch still goes.
//!
//! GSO is learnt per sender: a kernel or device without it (`ENOSYS`, `EOPNOTSUPP`, `EIO` for a
//! device without checksum offload) turns it off for good, a segment size the path refuses
//! (`EINVAL`, e.g. larger than the device's MTU) turns it off from that size up.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::{sys, BatchMode, MAX_BATCH};

/// Most segments one GSO `sendmsg` may carry (`UDP_MAX_SEGMENTS` is 64 on older kernels).
pub(super) const MAX_GSO_SEGMENTS: usize = 64;
/// Most payload one GSO `sendmsg` may carry (one UDP datagram of the kernel's 64 KiB limit, less
/// the IPv6 and UDP headers).
pub(super) const MAX_GSO_BYTES: usize = 65_000;

/// How many datagrams of a batch left, and how many the kernel refused (each a lost datagram,
/// as on a congested network; never the rest of the batch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendOutcome {
    pub sent: usize,
    pub failed: usize,
    /// The bytes of the datagrams sent.
    pub sent_bytes: usize,
}

/// Sends batches of datagrams to one destination each, with as few system calls as the kernel
/// allows.
pub struct BatchSender {
    mode: BatchMode,
    gso: AtomicBool,
    /// The smallest segment size a GSO send was refused at (`usize::MAX`: none yet).
    gso_refused_from: AtomicUsize,
    /// `sendmmsg` works (off after the first `ENOSYS`).
    mmsg: AtomicBool,
}

impl BatchSender {
    pub fn new(mode: BatchMode) -> Self {
        let batched = mode == BatchMode::Batched;
        BatchSender {
            mode,
            gso: AtomicBool::new(batched && sys::GSO_BUILT_IN),
            gso_refused_from: AtomicUsize::new(usize::MAX),
            mmsg: AtomicBool::new(batched),
        }
    }

    /// Whether the next run will be tried with GSO.
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Sends `datagrams` to `to`, in order.
    pub async fn send_many(&self, socket: &UdpSocket, to: SocketAddr, datagrams: &[&[u8]]) -> SendOutcome {
        let mut outcome = SendOutcome::default();
        if self.mode == BatchMode::OneAtATime {
            self.send_one_at_a_time(socket, to, datagrams, &mut outcome).await;
            return outcome;
        }
        let mut rest = datagrams;
        while !rest.is_empty() {
            let run = self.gso_run(rest);
            if run >= 2 {
                let (now, later) = rest.split_at(run);
                if self.send_run(socket, to, now, &mut outcome).await {
                    rest = later;
                    continue;
                }
                // GSO refused this run: it goes below with the rest (and `gso_run` now says so).
            }
            // Up to the next run GSO can take, one `sendmmsg` (or several if partly refused).
            let mut end = 1;
            while end < rest.len() && self.gso_run(&rest[end..]) < 2 {
                end += 1;
            }
            let (now, later) = rest.split_at(end.min(rest.len()));
            self.send_each(socket, to, now, &mut outcome).await;
            rest = later;
        }
        outcome
    }

    /// How many leading datagrams one GSO send may carry here (0 if GSO is off).
    fn gso_run(&self, datagrams: &[&[u8]]) -> usize {
        if !self.gso_enabled() {
            return 0;
        }
        let run = gso_run(datagrams);
        let segment = datagrams.first().map_or(0, |d| d.len());
        if segment >= self.gso_refused_from.load(Ordering::Relaxed) {
            return 0;
        }
        run
    }

    /// One GSO send of `run`: true if it was carried out (sent, or refused and counted as
    /// failed), false if GSO cannot carry it and it must go another way.
    async fn send_run(
        &self,
        socket: &UdpSocket,
        to: SocketAddr,
        run: &[&[u8]],
        outcome: &mut SendOutcome,
    ) -> bool {
        let result = loop {
            if let Err(e) = socket.writable().await {
                break Err(e);
            }
            match socket.try_io(Interest::WRITABLE, || sys::send_segments(socket, to, run)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => break other,
            }
        };
        match result {
            Ok(()) => {
                outcome.sent += run.len();
                outcome.sent_bytes += run.iter().map(|d| d.len()).sum::<usize>();
                true
            }
            Err(e) if sys::gso_unsupported(&e) => {
                tracing::debug!(err = %e, "UDP GSO unavailable; sendmmsg instead");
                self.gso.store(false, Ordering::Relaxed);
                false
            }
            Err(e) if sys::gso_segment_refused(&e) => {
                let segment = run[0].len();
                tracing::debug!(err = %e, segment, "GSO refused this segment size; sendmmsg for it and up");
                self.gso_refused_from.fetch_min(segment, Ordering::Relaxed);
                false
            }
            Err(e) => {
                tracing::trace!(err = %e, datagrams = run.len(), "GSO send failed");
                outcome.failed += run.len();
                true
            }
        }
    }

    /// `datagrams` with `sendmmsg`: a call sends up to the first one the kernel refuses; that
    /// one is counted and skipped, and the next call goes on after it.
    async fn send_each(
        &self,
        socket: &UdpSocket,
        to: SocketAddr,
        datagrams: &[&[u8]],
        outcome: &mut SendOutcome,
    ) {
        let mut rest = datagrams;
        while !rest.is_empty() {
            if !self.mmsg.load(Ordering::Relaxed) || rest.len() == 1 {
                return self.send_one_at_a_time(socket, to, rest, outcome).await;
            }
            let now = &rest[..rest.len().min(MAX_BATCH)];
            let result = loop {
                if let Err(e) = socket.writable().await {
                    break Err(e);
                }
                match socket.try_io(Interest::WRITABLE, || sys::send_many(socket, to, now)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => break other,
                }
            };
            match result {
                Ok(sent) => {
                    // The kernel sends at least one or fails the call.
                    let sent = sent.clamp(1, now.len());
                    outcome.sent += sent;
                    outcome.sent_bytes += rest[..sent].iter().map(|d| d.len()).sum::<usize>();
                    rest = &rest[sent..];
                }
                Err(e) if sys::is_unsupported(&e) => {
                    tracing::debug!(err = %e, "sendmmsg unavailable; one datagram per system call");
                    self.mmsg.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::trace!(err = %e, "a datagram of a batch was refused");
                    outcome.failed += 1;
                    rest = &rest[1..];
                }
            }
        }
    }

    async fn send_one_at_a_time(
        &self,
        socket: &UdpSocket,
        to: SocketAddr,
        datagrams: &[&[u8]],
        outcome: &mut SendOutcome,
    ) {
        for payload in datagrams {
            match socket.send_to(payload, to).await {
                Ok(_) => {
                    outcome.sent += 1;
                    outcome.sent_bytes += payload.len();
                }
                Err(e) => {
                    tracing::trace!(err = %e, "a datagram was refused");
                    outcome.failed += 1;
                }
            }
        }
    }
}

/// How many of the leading datagrams one GSO send can carry: equal sizes, the last maybe
/// shorter, within the kernel's segment and byte limits.
fn gso_run(datagrams: &[&[u8]]) -> usize {
    let Some(first) = datagrams.first() else { return 0 };
    let size = first.len();
    if size == 0 {
        return 1;
    }
    let mut bytes = 0;
    let mut run = 0;
    for d in datagrams.iter().take(MAX_GSO_SEGMENTS) {
        if d.len() > size || bytes + d.len() > MAX_GSO_BYTES {
            break;
        }
        bytes += d.len();
        run += 1;
        if d.len() < size {
            break;
        }
    }
    run.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::datagram_batch::test_support::{collect, numbered, pair};
    use crate::turn::datagram_batch::RecvBatch;

    /// Sends `sizes` as numbered datagrams with a sender in `mode` and checks they all arrive,
    /// whole and in order.
    async fn arrive_whole_and_in_order(mode: BatchMode, sizes: &[usize]) -> BatchSender {
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        let sender = BatchSender::new(mode);
        let datagrams: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| numbered(i, n)).collect();
        let refs: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
        let outcome = sender.send_many(&tx, to, &refs).await;
        let bytes = sizes.iter().sum();
        assert_eq!(outcome, SendOutcome { sent: sizes.len(), failed: 0, sent_bytes: bytes });
        let mut batch = RecvBatch::new(MAX_BATCH, 2048, BatchMode::Batched);
        let (got, _, truncated) = collect(&mut batch, &rx, sizes.len()).await;
        assert_eq!(truncated, 0, "every segment arrives as the datagram it was, not glued");
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
        assert_eq!(payloads, datagrams);
        sender
    }

    /// Runs of equal sizes, runs ending in a shorter one, a longer one right after a run, lone
    /// sizes between runs: every GSO boundary the cutting can meet.
    const MIXED: [usize; 22] = [
        100, 100, 50, 1200, 1200, 1200, 20, 20, 900, 100, 1000, 1000, 999, 1000, 2, 2, 2, 2, 7, 1400, 1400, 3,
    ];

    #[tokio::test]
    async fn mixed_sizes_arrive_whole_and_in_order_batched() {
        let sender = arrive_whole_and_in_order(BatchMode::Batched, &MIXED).await;
        assert_eq!(sender.gso_enabled(), cfg!(target_os = "linux"), "loopback takes GSO");
    }

    #[tokio::test]
    async fn mixed_sizes_arrive_whole_and_in_order_one_at_a_time() {
        let sender = arrive_whole_and_in_order(BatchMode::OneAtATime, &MIXED).await;
        assert!(!sender.gso_enabled());
    }

    #[tokio::test]
    async fn a_full_batch_of_one_size_is_cut_back_into_its_datagrams() {
        // 64 x 1000 bytes: one GSO call at the segment limit; 100 x 1000: over the byte limit.
        arrive_whole_and_in_order(BatchMode::Batched, &[1000; 64]).await;
        arrive_whole_and_in_order(BatchMode::Batched, &[1000; 100]).await;
    }

    #[tokio::test]
    async fn a_refused_datagram_is_counted_and_the_rest_of_the_batch_still_goes() {
        // An IPv4 socket cannot send to an IPv6 address: every datagram to it is refused. To a
        // reachable address, a datagram over 64 KiB is refused alone (EMSGSIZE) while those
        // around it go.
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        for mode in [BatchMode::Batched, BatchMode::OneAtATime] {
            let sender = BatchSender::new(mode);
            let too_big = vec![0u8; 70_000];
            let datagrams =
                [numbered(0, 100), numbered(1, 100), too_big.clone(), numbered(3, 100), numbered(4, 50)];
            let refs: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
            let outcome = sender.send_many(&tx, to, &refs).await;
            assert_eq!(outcome, SendOutcome { sent: 4, failed: 1, sent_bytes: 350 }, "{mode:?}");
            let mut batch = RecvBatch::new(MAX_BATCH, 2048, BatchMode::Batched);
            let (got, _, _) = collect(&mut batch, &rx, 4).await;
            let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
            assert_eq!(payloads, vec![numbered(0, 100), numbered(1, 100), numbered(3, 100), numbered(4, 50)]);

            let v6: SocketAddr = "[::1]:9".parse().unwrap();
            let outcome = sender.send_many(&tx, v6, &refs[..2]).await;
            assert_eq!(outcome, SendOutcome { sent: 0, failed: 2, sent_bytes: 0 }, "{mode:?}");
        }
    }

    #[test]
    fn gso_runs_are_equal_sizes_with_a_shorter_last() {
        let d = |n: usize| vec![0u8; n];
        let (a, b, c) = (d(100), d(100), d(40));
        let (e, f) = (d(100), d(200));
        assert_eq!(gso_run(&[&a, &b, &c, &e]), 3, "a shorter one ends the run, included");
        assert_eq!(gso_run(&[&a, &f]), 1, "a longer one starts a new run");
        assert_eq!(gso_run(&[]), 0);
        let big = d(30_000);
        assert_eq!(gso_run(&[&big, &big, &big]), 2, "within the 64 KiB datagram limit");
        let many: Vec<&[u8]> = (0..100).map(|_| a.as_slice()).collect();
        assert_eq!(gso_run(&many), MAX_GSO_SEGMENTS);
    }

    #[test]
    fn a_refused_segment_size_is_not_tried_with_gso_again() {
        let sender = BatchSender::new(BatchMode::Batched);
        let (small, large) = (vec![0u8; 500], vec![0u8; 1400]);
        sender.gso_refused_from.store(1400, Ordering::Relaxed);
        if sender.gso_enabled() {
            assert_eq!(sender.gso_run(&[&small, &small]), 2);
        }
        assert_eq!(sender.gso_run(&[&large, &large]), 0);
    }
}
