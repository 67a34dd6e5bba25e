//! Receiving a batch: [`RecvBatch`] owns reusable slots, fills as many as are queued with one
//! `recvmmsg` (or one `recvmsg` each, in the fallback), splits UDP GRO buffers back into the
//! datagrams sent, and drops (counting) datagrams longer than a slot instead of handing them on
//! cut short.
//!
//! Each slot is `front | receive area | back`: the kernel writes only into the receive area, so
//! a caller can write a header into `front` (and padding into `back`) of a received datagram in
//! place ([`RecvBatch::framing_slot`]) and send it from there, without a copy.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::{sys, BatchMode, MAX_BATCH};

/// UDP GRO hands up to 64 segments in one buffer, never more than a UDP datagram's 64 KiB; a
/// socket only gets GRO turned on if every buffer can hold that much.
pub const GRO_SLOT_SIZE: usize = 65_536;

/// One whole datagram of the last batch.
#[derive(Debug)]
pub struct Datagram<'a> {
    pub from: SocketAddr,
    pub payload: &'a [u8],
}

/// Where one datagram of the batch lies in the storage.
#[derive(Clone, Copy, Debug)]
struct Span {
    from: SocketAddr,
    start: usize,
    len: usize,
}

/// What the kernel said about one filled slot.
#[derive(Clone, Copy, Debug)]
pub(super) struct Received {
    pub slot: usize,
    pub len: usize,
    /// The GRO segment size (0: one datagram).
    pub stride: usize,
    pub from: SocketAddr,
    pub truncated: bool,
}

/// How the storage is cut into slots (what the system calls need to know).
#[derive(Clone, Copy, Debug)]
pub(super) struct SlotLayout {
    /// Bytes kept free in front of each receive area.
    pub front: usize,
    /// Bytes the kernel may write per slot.
    pub size: usize,
    /// Bytes from one slot's start to the next (`front + size + back`).
    pub stride: usize,
}

impl SlotLayout {
    /// The receive area of `slot` within the storage.
    pub fn area(&self, slot: usize) -> Range<usize> {
        let start = slot * self.stride + self.front;
        start..start + self.size
    }
}

/// A received datagram with the room around it, to be framed in place: the payload is
/// `buf[front..front + len]`, and `buf` starts at `offset` in the batch's storage.
pub struct FramingSlot<'a> {
    pub from: SocketAddr,
    pub len: usize,
    pub buf: &'a mut [u8],
    pub offset: usize,
}

/// Reusable receive slots, and what the last [`RecvBatch::recv`] put in them.
pub struct RecvBatch {
    storage: Vec<u8>,
    layout: SlotLayout,
    back: usize,
    slots: usize,
    mode: BatchMode,
    gro: bool,
    datagrams: Vec<Span>,
    /// What the kernel said about each slot of the last call (kept for its capacity).
    slots_received: Vec<Received>,
    truncated: usize,
}

impl RecvBatch {
    /// `slots` is capped at [`MAX_BATCH`]; a datagram longer than `slot_size` is dropped and
    /// counted in [`RecvBatch::truncated`].
    pub fn new(slots: usize, slot_size: usize, mode: BatchMode) -> Self {
        Self::with_room(slots, slot_size, 0, 0, mode)
    }

    /// As [`RecvBatch::new`], keeping `front` bytes before and `back` bytes after every
    /// datagram for a header and padding written in place.
    pub fn with_room(slots: usize, slot_size: usize, front: usize, back: usize, mode: BatchMode) -> Self {
        let slots = slots.clamp(1, MAX_BATCH);
        let size = slot_size.max(1);
        let stride = front + size + back;
        RecvBatch {
            storage: vec![0u8; slots * stride],
            layout: SlotLayout { front, size, stride },
            back,
            slots,
            mode,
            gro: false,
            datagrams: Vec::with_capacity(slots),
            slots_received: Vec::with_capacity(slots),
            truncated: 0,
        }
    }

    /// Asks the kernel to coalesce back-to-back datagrams of one flow (UDP GRO) on `socket`,
    /// which this batch then splits. Only when batched, every slot holds [`GRO_SLOT_SIZE`]
    /// bytes (else a coalesced buffer could be cut), and no room is kept around datagrams (GRO
    /// segments lie back to back). Returns whether GRO is on. The socket must be read only
    /// through GRO-aware batches afterwards.
    pub fn enable_gro(&mut self, socket: &UdpSocket) -> bool {
        let roomless = self.layout.front == 0 && self.back == 0;
        if self.mode != BatchMode::Batched || self.layout.size < GRO_SLOT_SIZE || !roomless {
            return false;
        }
        self.gro = sys::enable_gro(socket).is_ok();
        self.gro
    }

    pub fn mode(&self) -> BatchMode {
        self.mode
    }

    /// Waits until at least one datagram arrives, then takes as many as are queued (up to the
    /// slot count) in one system call. Afterwards [`RecvBatch::datagrams`] yields the whole
    /// ones in arrival order; datagrams that did not fit a slot are only counted.
    ///
    /// A batched call that fills fewer slots than it offered emptied the queue, so it also
    /// clears the socket's readiness (as the `EAGAIN` of one more call would): the next `recv`
    /// waits for the next datagram instead of making a call that finds nothing. At a paced
    /// load (one datagram per wake-up) that is one system call per datagram instead of two.
    pub async fn recv(&mut self, socket: &UdpSocket) -> io::Result<()> {
        self.datagrams.clear();
        self.truncated = 0;
        loop {
            socket.readable().await?;
            let received = socket.try_io(Interest::READABLE, || match self.mode {
                BatchMode::Batched => match self.recv_batched(socket) {
                    // Tells tokio the queue is empty (it clears readiness on `WouldBlock`,
                    // unless a readiness event came in since; then the next call looks again).
                    Ok(filled) if filled < self.slots => Err(io::ErrorKind::WouldBlock.into()),
                    other => other.map(|_| ()),
                },
                BatchMode::OneAtATime => self.recv_one_at_a_time(socket),
            });
            match received {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.datagrams.is_empty() || self.truncated > 0 {
                        return Ok(());
                    }
                }
                Err(e) if self.mode == BatchMode::Batched && sys::recv_unsupported(&e) => {
                    tracing::debug!(err = %e, "recvmmsg unavailable; one datagram per system call");
                    self.mode = BatchMode::OneAtATime;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The whole datagrams of the last [`RecvBatch::recv`], in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = Datagram<'_>> + '_ {
        self.datagrams
            .iter()
            .map(|s| Datagram { from: s.from, payload: &self.storage[s.start..s.start + s.len] })
    }

    /// Slots offered to each call.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// After a call that filled every slot (more was probably queued), grows to `slots` slots
    /// (at most [`MAX_BATCH`]); true if it grew. A socket that never bursts keeps its small
    /// buffer. Call it between batches: the last batch's datagrams stay where they are.
    pub fn grow_when_full(&mut self, slots: usize) -> bool {
        let slots = slots.min(MAX_BATCH);
        if self.slots >= slots || self.datagrams.len() + self.truncated < self.slots {
            return false;
        }
        self.storage.resize(slots * self.layout.stride, 0);
        self.slots = slots;
        self.datagrams.reserve(slots);
        self.slots_received.reserve(slots);
        true
    }

    /// How many whole datagrams the last batch holds.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// How many datagrams of the last batch were longer than a slot (dropped).
    pub fn truncated(&self) -> usize {
        self.truncated
    }

    /// Datagram `index` of the last batch (whole ones only, in arrival order).
    pub fn get(&self, index: usize) -> Option<Datagram<'_>> {
        let s = self.datagrams.get(index)?;
        Some(Datagram { from: s.from, payload: &self.storage[s.start..s.start + s.len] })
    }

    /// Datagram `index` with the room around it, writable, to frame it in place. `None` past
    /// the end of the batch, or if GRO is on (its segments have no room between them).
    pub fn framing_slot(&mut self, index: usize) -> Option<FramingSlot<'_>> {
        if self.gro {
            return None;
        }
        let s = *self.datagrams.get(index)?;
        let offset = s.start - self.layout.front;
        let end = s.start + s.len + self.back;
        Some(FramingSlot { from: s.from, len: s.len, buf: &mut self.storage[offset..end], offset })
    }

    /// Bytes of the storage, by the offsets a [`FramingSlot`] gave (a framed message).
    pub fn bytes(&self, range: Range<usize>) -> &[u8] {
        self.storage.get(range).unwrap_or(&[])
    }

    /// One `recvmmsg`; how many slots the kernel filled.
    fn recv_batched(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut received = std::mem::take(&mut self.slots_received);
        let result =
            sys::recv_many(socket, &mut self.storage, self.layout, self.slots, self.gro, &mut received);
        for r in &received {
            self.take_slot(r);
        }
        self.slots_received = received;
        result
    }

    /// Splits one slot: a GRO buffer holds `len / stride` datagrams of `stride` bytes and maybe
    /// a shorter last one.
    fn take_slot(&mut self, r: &Received) {
        if r.truncated {
            self.truncated += 1;
            return;
        }
        let base = self.layout.area(r.slot).start;
        let stride = if r.stride == 0 { r.len.max(1) } else { r.stride };
        if r.len == 0 {
            self.datagrams.push(Span { from: r.from, start: base, len: 0 });
            return;
        }
        let mut offset = 0;
        while offset < r.len {
            let len = stride.min(r.len - offset);
            self.datagrams.push(Span { from: r.from, start: base + offset, len });
            offset += len;
        }
    }

    /// One `recvmsg` per datagram until the queue is empty or the slots are full (an empty
    /// queue before the first one is `WouldBlock`, which makes tokio wait for readiness).
    fn recv_one_at_a_time(&mut self, socket: &UdpSocket) -> io::Result<()> {
        for slot in 0..self.slots {
            let buf = &mut self.storage[self.layout.area(slot)];
            match recv_one(socket, buf) {
                Ok((len, from, truncated)) => {
                    self.take_slot(&Received { slot, len, stride: 0, from, truncated });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && slot > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One `recvmsg` into `buf`: length, source, and whether the kernel cut it (`MSG_TRUNC`).
fn recv_one(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, bool)> {
    // SAFETY: `buf` is initialized memory; viewing it as `MaybeUninit<u8>` only lets `recvmsg`
    // write bytes into it, which keeps it initialized.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    let mut slices = [socket2::MaybeUninitSlice::new(uninit)];
    let (n, flags, from) = socket2::SockRef::from(socket).recv_from_vectored(&mut slices)?;
    let from = from
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address"))?;
    Ok((n, from, flags.is_truncated()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::turn::datagram_batch::test_support::{collect, numbered, pair};
    use crate::turn::datagram_batch::BatchSender;

    async fn many_datagrams_in_order(mode: BatchMode) -> usize {
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        for i in 0..100 {
            tx.send_to(&numbered(i, 100 + i), to).await.unwrap();
        }
        let mut batch = RecvBatch::new(32, 2048, mode);
        let (got, largest, truncated) = collect(&mut batch, &rx, 100).await;
        assert_eq!(truncated, 0);
        assert_eq!(got.len(), 100);
        for (i, (from, payload)) in got.iter().enumerate() {
            assert_eq!(*from, tx.local_addr().unwrap());
            assert_eq!(payload, &numbered(i, 100 + i), "datagram {i} whole and in order");
        }
        largest
    }

    #[tokio::test]
    async fn a_batch_holds_many_datagrams_whole_and_in_order() {
        let largest = many_datagrams_in_order(BatchMode::Batched).await;
        // All 100 were queued before the first read: one call takes a full batch.
        assert_eq!(largest, 32);
    }

    #[tokio::test]
    async fn a_small_batch_grows_once_a_call_fills_it_and_reads_on_whole_and_in_order() {
        for mode in [BatchMode::Batched, BatchMode::OneAtATime] {
            let (rx, tx) = pair().await;
            let to = rx.local_addr().unwrap();
            let mut batch = RecvBatch::with_room(4, 2048, 48, 4, mode);
            tx.send_to(&numbered(0, 100), to).await.unwrap();
            batch.recv(&rx).await.unwrap();
            assert_eq!(batch.len(), 1);
            assert!(!batch.grow_when_full(32), "a short batch keeps its size");
            for i in 1..40 {
                tx.send_to(&numbered(i, 100 + i), to).await.unwrap();
            }
            batch.recv(&rx).await.unwrap();
            assert_eq!(batch.len(), 4, "{mode:?}: the four slots filled");
            let first: Vec<Vec<u8>> = batch.datagrams().map(|d| d.payload.to_vec()).collect();
            assert!(batch.grow_when_full(32));
            assert_eq!(batch.slots(), 32);
            assert!(!batch.grow_when_full(32), "grown once");
            let (rest, largest, truncated) = collect(&mut batch, &rx, 35).await;
            assert_eq!((truncated, largest), (0, 32), "{mode:?}: the next call takes 32");
            let got: Vec<Vec<u8>> = first.into_iter().chain(rest.into_iter().map(|(_, p)| p)).collect();
            let want: Vec<Vec<u8>> = (1..40).map(|i| numbered(i, 100 + i)).collect();
            assert_eq!(got, want, "{mode:?}: whole and in order across the growth");
        }
    }

    #[tokio::test]
    async fn the_forced_fallback_reads_the_same_datagrams() {
        let largest = many_datagrams_in_order(BatchMode::OneAtATime).await;
        assert_eq!(largest, 32, "the fallback still fills a batch per wake-up");
    }

    /// A short batch clears readiness without the `EAGAIN` call; a datagram that arrives
    /// right after must still wake the reader. A sender racing the reader (so batches come out
    /// short, full, and in between) must never leave datagrams waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn datagrams_arriving_around_a_short_batch_still_wake_the_reader() {
        const COUNT: usize = 20_000;
        /// Most datagrams in flight, far below what the socket buffer holds: a loss would be
        /// the kernel's, not the batch's, and fail the test for the wrong reason.
        const WINDOW: usize = 100;
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        let read = Arc::new(AtomicUsize::new(0));
        let read_by_sender = read.clone();
        let sender = tokio::spawn(async move {
            for i in 0..COUNT {
                while i >= read_by_sender.load(Ordering::Acquire) + WINDOW {
                    tokio::task::yield_now().await;
                }
                tx.send_to(&numbered(i % 65_536, 40), to).await.unwrap();
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut batch = RecvBatch::new(4, 2048, BatchMode::Batched);
        let mut next = 0;
        let mut short_batches = 0;
        while next < COUNT {
            tokio::time::timeout(Duration::from_secs(5), batch.recv(&rx))
                .await
                .unwrap_or_else(|_| panic!("stalled after {next} of {COUNT} datagrams"))
                .unwrap();
            short_batches += usize::from(batch.len() < 4);
            for d in batch.datagrams() {
                assert_eq!(d.payload, numbered(next % 65_536, 40), "datagram {next}");
                next += 1;
            }
            read.store(next, Ordering::Release);
        }
        sender.await.unwrap();
        assert!(short_batches > 0, "the race produced short batches");
    }

    async fn oversize_dropped(mode: BatchMode) {
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        tx.send_to(&numbered(0, 500), to).await.unwrap();
        tx.send_to(&numbered(1, 1501), to).await.unwrap();
        tx.send_to(&numbered(2, 1500), to).await.unwrap();
        let mut batch = RecvBatch::new(8, 1500, mode);
        let (got, _, truncated) = collect(&mut batch, &rx, 3).await;
        assert_eq!(truncated, 1, "the 1501-byte datagram is counted, not handed on");
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
        assert_eq!(payloads, vec![numbered(0, 500), numbered(2, 1500)]);
    }

    #[tokio::test]
    async fn a_datagram_longer_than_its_slot_is_dropped_batched() {
        oversize_dropped(BatchMode::Batched).await;
    }

    #[tokio::test]
    async fn a_datagram_longer_than_its_slot_is_dropped_one_at_a_time() {
        oversize_dropped(BatchMode::OneAtATime).await;
    }

    async fn room_kept_around_each_datagram(mode: BatchMode) {
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        let sizes = [10, 1500, 1, 700];
        for (i, &n) in sizes.iter().enumerate() {
            tx.send_to(&numbered(i, n.max(2)), to).await.unwrap();
        }
        let mut batch = RecvBatch::with_room(8, 1500, 8, 3, mode);
        let mut framed = Vec::new();
        while framed.len() < sizes.len() {
            tokio::time::timeout(Duration::from_secs(5), batch.recv(&rx)).await.unwrap().unwrap();
            let mut ranges = Vec::new();
            for i in 0..batch.len() {
                let slot = batch.framing_slot(i).unwrap();
                assert_eq!(slot.buf.len(), 8 + slot.len + 3, "room on both sides of every datagram");
                // A header in front and padding after, as the relay writes them.
                slot.buf[..8].copy_from_slice(b"HEADER:)");
                slot.buf[8 + slot.len..].copy_from_slice(b"pad");
                ranges.push(slot.offset..slot.offset + slot.buf.len());
            }
            framed.extend(ranges.into_iter().map(|r| batch.bytes(r).to_vec()));
        }
        for (i, message) in framed.iter().enumerate() {
            let mut want = b"HEADER:)".to_vec();
            want.extend(numbered(i, sizes[i].max(2)));
            want.extend(b"pad");
            assert_eq!(message, &want, "datagram {i} framed in place, its neighbours untouched");
        }
    }

    #[tokio::test]
    async fn headers_written_in_place_do_not_touch_neighbouring_datagrams() {
        room_kept_around_each_datagram(BatchMode::Batched).await;
        room_kept_around_each_datagram(BatchMode::OneAtATime).await;
    }

    #[tokio::test]
    async fn gro_buffers_are_split_into_the_datagrams_sent() {
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        let mut batch = RecvBatch::new(8, GRO_SLOT_SIZE, BatchMode::Batched);
        let gro = batch.enable_gro(&rx);
        let sender = BatchSender::new(BatchMode::Batched);
        // 10 of 1200 bytes and a shorter last one: on loopback a GSO send reaches a GRO socket
        // as one buffer (the kernel keeps it whole), which the batch must cut back into 11.
        let datagrams: Vec<Vec<u8>> =
            (0..11).map(|i| numbered(i, if i == 10 { 300 } else { 1200 })).collect();
        let refs: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
        let outcome = sender.send_many(&tx, to, &refs).await;
        assert_eq!((outcome.sent, outcome.failed, outcome.sent_bytes), (11, 0, 10 * 1200 + 300));
        let (got, largest, _) = collect(&mut batch, &rx, 11).await;
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
        assert_eq!(payloads, datagrams);
        if cfg!(target_os = "linux") && gro && sender.gso_enabled() {
            assert_eq!(largest, 11, "one GSO send arrived as one coalesced buffer, split here");
            assert!(batch.framing_slot(0).is_none(), "GRO segments have no room to frame in");
        }
    }
}
