//! Sending a batch to one destination: [`BatchSender::send_many`] cuts it into runs of
//! equal-size datagrams (the last of a run may be shorter), sends each run of two or more as one
//! UDP GSO `sendmsg` (the kernel cuts it back into the datagrams), and what is left between runs
//! with `sendmmsg`, in order. A datagram the kernel refuses is counted in [`SendOutcome::failed`]
//! and skipped; the rest of the batch still goes.
//!
//! What the kernel refuses is learnt, and kept as narrow as the cause. A kernel without a
//! feature (`ENOSYS`, `EOPNOTSUPP`, `ENOPROTOOPT`) turns it off for the sender, for good. A GSO
//! send refused for where it went (`EINVAL`: a segment larger than the route's MTU allows, or an
//! unusable address; `EIO`: a device without checksum offload) turns GSO off for that
//! destination only, from that segment size up (`gso_refusals`), and the run goes by `sendmmsg`.
//! Any other error, `EINVAL` from `sendmmsg` included, is one lost datagram. Why so narrow: a
//! sender serves many clients (a listener's sends to every peer of its clients), and a client
//! chooses its peers; whatever one client's destination makes the kernel answer must not cost
//! the others their batching.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::gso_refusals::GsoRefusals;
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
    /// Of `sent`, how many left in UDP GSO sends.
    pub sent_by_gso: usize,
    /// Of `sent`, how many left in `sendmmsg` calls.
    pub sent_by_sendmmsg: usize,
}

/// Sends batches of datagrams to one destination each, with as few system calls as the kernel
/// allows.
pub struct BatchSender {
    mode: BatchMode,
    /// The kernel does GSO (off after it said it has none).
    gso: AtomicBool,
    /// The destinations (and segment sizes) the kernel refused GSO sends for.
    gso_refusals: GsoRefusals,
    /// `sendmmsg` works (off after the kernel said it has none).
    mmsg: AtomicBool,
    /// Tests: GSO sends to a destination, of segments from a size up, the kernel is made to
    /// refuse with an errno (as a route with a small MTU or without checksum offload would).
    #[cfg(test)]
    gso_refused_by_kernel: Option<(SocketAddr, usize, i32)>,
}

impl BatchSender {
    pub fn new(mode: BatchMode) -> Self {
        let batched = mode == BatchMode::Batched;
        BatchSender {
            mode,
            gso: AtomicBool::new(batched && sys::GSO_BUILT_IN),
            gso_refusals: GsoRefusals::default(),
            mmsg: AtomicBool::new(batched),
            #[cfg(test)]
            gso_refused_by_kernel: None,
        }
    }

    /// Whether the next run will be tried with GSO (to a destination that did not refuse it).
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Whether datagrams between GSO runs go with `sendmmsg`.
    pub fn sendmmsg_enabled(&self) -> bool {
        self.mmsg.load(Ordering::Relaxed)
    }

    /// Sends `datagrams` to `to`, in order.
    pub async fn send_many(&self, socket: &UdpSocket, to: SocketAddr, datagrams: &[&[u8]]) -> SendOutcome {
        let mut outcome = SendOutcome::default();
        if self.mode == BatchMode::OneAtATime {
            self.send_one_at_a_time(socket, to, datagrams, &mut outcome).await;
            return outcome;
        }
        // Looked up once per batch: the destination is the same for all of it.
        let mut refused_from = self.gso_refusals.refused_from(to);
        let mut rest = datagrams;
        while !rest.is_empty() {
            let run = self.gso_run(rest, refused_from);
            if run >= 2 {
                let (now, later) = rest.split_at(run);
                if self.send_run(socket, to, now, &mut refused_from, &mut outcome).await {
                    rest = later;
                    continue;
                }
                // GSO refused this run: it goes below with the rest (and `gso_run` now says so).
            }
            // Up to the next run GSO can take, one `sendmmsg` (or several if partly refused).
            let mut end = 1;
            while end < rest.len() && self.gso_run(&rest[end..], refused_from) < 2 {
                end += 1;
            }
            let (now, later) = rest.split_at(end.min(rest.len()));
            self.send_each(socket, to, now, &mut outcome).await;
            rest = later;
        }
        outcome
    }

    /// How many leading datagrams one GSO send may carry to a destination that refused GSO
    /// from `refused_from` bytes a segment (0 if GSO is off).
    fn gso_run(&self, datagrams: &[&[u8]], refused_from: usize) -> usize {
        if !self.gso_enabled() {
            return 0;
        }
        let segment = datagrams.first().map_or(0, |d| d.len());
        if segment >= refused_from {
            return 0;
        }
        gso_run(datagrams)
    }

    /// One GSO send of `run`: true if it was carried out (sent, or refused and counted as
    /// failed), false if GSO cannot carry it and it must go another way.
    async fn send_run(
        &self,
        socket: &UdpSocket,
        to: SocketAddr,
        run: &[&[u8]],
        refused_from: &mut usize,
        outcome: &mut SendOutcome,
    ) -> bool {
        let result = loop {
            if let Err(e) = socket.writable().await {
                break Err(e);
            }
            match socket.try_io(Interest::WRITABLE, || self.send_segments(socket, to, run)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => break other,
            }
        };
        let segment = run[0].len();
        match result {
            Ok(()) => {
                outcome.sent += run.len();
                outcome.sent_by_gso += run.len();
                outcome.sent_bytes += run.iter().map(|d| d.len()).sum::<usize>();
                true
            }
            Err(e) if sys::feature_missing(&e) => {
                tracing::debug!(err = %e, "UDP GSO unavailable; sendmmsg instead");
                self.gso.store(false, Ordering::Relaxed);
                false
            }
            Err(e) => match sys::gso_refused_from(&e, segment) {
                Some(from) => {
                    tracing::debug!(err = %e, segment, %to, "GSO refused for this destination; sendmmsg to it");
                    *refused_from = self.gso_refusals.refuse(to, from);
                    false
                }
                None => {
                    tracing::trace!(err = %e, datagrams = run.len(), "GSO send failed");
                    outcome.failed += run.len();
                    true
                }
            },
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
            if !self.sendmmsg_enabled() || rest.len() == 1 {
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
                    outcome.sent_by_sendmmsg += sent;
                    outcome.sent_bytes += rest[..sent].iter().map(|d| d.len()).sum::<usize>();
                    rest = &rest[sent..];
                }
                Err(e) if sys::feature_missing(&e) => {
                    tracing::debug!(err = %e, "sendmmsg unavailable; one datagram per system call");
                    self.mmsg.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    // `EINVAL` included: it names this datagram's destination, not the call.
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

    /// The GSO system call (in tests, maybe refused as `gso_refused_by_kernel` says).
    fn send_segments(&self, socket: &UdpSocket, to: SocketAddr, run: &[&[u8]]) -> io::Result<()> {
        #[cfg(test)]
        if let Some((at, from, errno)) = self.gso_refused_by_kernel {
            if at == to && run[0].len() >= from {
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
        sys::send_segments(socket, to, run)
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
    use crate::turn::datagram_batch::gso_refusals::NOT_REFUSED;
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
        assert_eq!((outcome.sent, outcome.failed, outcome.sent_bytes), (sizes.len(), 0, bytes));
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
            assert_eq!((outcome.sent, outcome.failed, outcome.sent_bytes), (4, 1, 350), "{mode:?}");
            let mut batch = RecvBatch::new(MAX_BATCH, 2048, BatchMode::Batched);
            let (got, _, _) = collect(&mut batch, &rx, 4).await;
            let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
            assert_eq!(payloads, vec![numbered(0, 100), numbered(1, 100), numbered(3, 100), numbered(4, 50)]);

            let v6: SocketAddr = "[::1]:9".parse().unwrap();
            let outcome = sender.send_many(&tx, v6, &refs[..2]).await;
            assert_eq!((outcome.sent, outcome.failed, outcome.sent_bytes), (0, 2, 0), "{mode:?}");
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

    /// Sends `datagrams` to `rx` with `sender` and checks they all arrive, in order.
    #[cfg(target_os = "linux")]
    async fn all_arrive(
        sender: &BatchSender,
        tx: &UdpSocket,
        rx: &UdpSocket,
        datagrams: &[Vec<u8>],
    ) -> SendOutcome {
        let refs: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
        let outcome = sender.send_many(tx, rx.local_addr().unwrap(), &refs).await;
        assert_eq!((outcome.sent, outcome.failed), (datagrams.len(), 0));
        let mut batch = RecvBatch::new(MAX_BATCH, 2048, BatchMode::Batched);
        let (got, _, _) = collect(&mut batch, rx, datagrams.len()).await;
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
        assert_eq!(payloads, datagrams);
        outcome
    }

    /// A run of ten equal sizes and a shorter last (one GSO send), then two sizes that stand alone
    /// (one `sendmmsg`).
    #[cfg(target_os = "linux")]
    fn runs_and_singles() -> Vec<Vec<u8>> {
        let sizes = [1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 100, 200, 300];
        sizes.iter().enumerate().map(|(i, &n)| numbered(i, n)).collect()
    }

    /// Port 0 is a real destination the kernel refuses every send to with `EINVAL`, GSO and
    /// `sendmmsg` alike (as a client's peer could, if the policy let it through): its datagrams
    /// fail alone, and the same sender keeps GSO and `sendmmsg` for the destinations sent to
    /// before and after it, as a listener's sender does for every client's peers.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_destination_the_kernel_refuses_fails_alone_and_batching_stays_on_for_the_others() {
        let (rx, tx) = pair().await;
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sender = BatchSender::new(BatchMode::Batched);
        let datagrams = runs_and_singles();
        let refs: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
        let port_zero: SocketAddr = "127.0.0.1:0".parse().unwrap();

        let before = all_arrive(&sender, &tx, &rx, &datagrams).await;
        let refused = sender.send_many(&tx, port_zero, &refs).await;
        assert_eq!((refused.sent, refused.failed), (0, datagrams.len()), "each one counted as lost");
        assert!(
            sender.gso_enabled() && sender.sendmmsg_enabled(),
            "EINVAL for one destination turns nothing off"
        );
        let after = all_arrive(&sender, &tx, &other, &datagrams).await;
        let again = all_arrive(&sender, &tx, &rx, &datagrams).await;
        for outcome in [before, after, again] {
            assert_eq!((outcome.sent_by_gso, outcome.sent_by_sendmmsg), (11, 2), "still batched");
        }
        assert_eq!(sender.gso_refusals.refused_from(rx.local_addr().unwrap()), NOT_REFUSED);
    }

    /// A route that refuses GSO segments from 1200 bytes (`EINVAL`, as a small MTU does), or
    /// every GSO send (`EIO`, a device without checksum offload): that destination gets those
    /// runs by `sendmmsg`, whole; smaller segments to it, and every size to another
    /// destination, still go by GSO.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_gso_refusal_is_kept_for_its_destination_and_segment_size_only() {
        for (errno, from) in [(libc::EINVAL, 1200), (libc::EIO, 0)] {
            let (rx, tx) = pair().await;
            let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut sender = BatchSender::new(BatchMode::Batched);
            sender.gso_refused_by_kernel = Some((rx.local_addr().unwrap(), from, errno));
            let large: Vec<Vec<u8>> = (0..8).map(|i| numbered(i, 1400)).collect();
            let small: Vec<Vec<u8>> = (0..8).map(|i| numbered(i, 500)).collect();

            let refused = all_arrive(&sender, &tx, &rx, &large).await;
            assert_eq!((refused.sent_by_gso, refused.sent_by_sendmmsg), (0, 8), "errno {errno}");
            assert!(sender.gso_enabled(), "errno {errno}: GSO stays on for the socket");
            let smaller = all_arrive(&sender, &tx, &rx, &small).await;
            let expected_gso = if from == 0 { 0 } else { 8 };
            assert_eq!(smaller.sent_by_gso, expected_gso, "errno {errno}: below the refused size");
            let elsewhere = all_arrive(&sender, &tx, &other, &large).await;
            assert_eq!(elsewhere.sent_by_gso, 8, "errno {errno}: another destination keeps GSO");
            let learnt = if errno == libc::EIO { 0 } else { 1400 };
            assert_eq!(sender.gso_refusals.refused_from(rx.local_addr().unwrap()), learnt, "errno {errno}");
        }
    }

    /// A kernel without GSO (`ENOPROTOOPT` for the control message, `ENOSYS`) turns it off for
    /// the whole sender; the datagrams still all arrive, by `sendmmsg`.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_kernel_without_gso_turns_it_off_for_the_sender() {
        for errno in [libc::ENOPROTOOPT, libc::ENOSYS] {
            let (rx, tx) = pair().await;
            let mut sender = BatchSender::new(BatchMode::Batched);
            sender.gso_refused_by_kernel = Some((rx.local_addr().unwrap(), 0, errno));
            let outcome = all_arrive(&sender, &tx, &rx, &runs_and_singles()).await;
            assert_eq!((outcome.sent_by_gso, outcome.sent_by_sendmmsg), (0, 13), "errno {errno}");
            assert!(!sender.gso_enabled(), "errno {errno}");
            assert!(sender.sendmmsg_enabled(), "errno {errno}");
        }
    }

    #[test]
    fn a_refused_segment_size_is_not_tried_with_gso_again() {
        let sender = BatchSender::new(BatchMode::Batched);
        let (small, large) = (vec![0u8; 500], vec![0u8; 1400]);
        if sender.gso_enabled() {
            assert_eq!(sender.gso_run(&[&small, &small], 1400), 2);
            assert_eq!(sender.gso_run(&[&small, &small], NOT_REFUSED), 2);
        }
        assert_eq!(sender.gso_run(&[&large, &large], 1400), 0);
        assert_eq!(sender.gso_run(&[&small, &small], 0), 0);
    }
}
