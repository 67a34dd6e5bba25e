//! What the sanitizer removed, counted by reason (for `/metrics`), never by address.
//!
//! The hub owns a `PrivacyTally`; the runner publishes it with the other stats. Reasons are a
//! fixed set, so the metric's cardinality is constant whatever clients send.

/// Why a whole candidate (an ICE candidate message or an SDP `a=candidate` line) was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not RFC 8839 grammar (or a transport other than UDP/TCP).
    Unparseable,
    /// host, srflx or prflx: the sender's own address.
    NotRelay,
    /// An mDNS `.local` name or another host name instead of an address.
    HostName,
    /// `typ relay`, but the address is not one of the relays this server hands out.
    NotOurRelay,
    /// An extension attribute (known or not) whose name or value carries an address.
    AddressInExtension,
}

impl DropReason {
    pub const ALL: [DropReason; 5] =
        [Self::Unparseable, Self::NotRelay, Self::HostName, Self::NotOurRelay, Self::AddressInExtension];

    pub fn label(self) -> &'static str {
        match self {
            Self::Unparseable => "unparseable",
            Self::NotRelay => "not_relay",
            Self::HostName => "hostname",
            Self::NotOurRelay => "not_our_relay",
            Self::AddressInExtension => "address_in_extension",
        }
    }
}

/// A field that was rewritten or removed while the message around it was still relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanitizedField {
    /// A candidate's `raddr`/`rport` set to the placeholder.
    RelatedAddress,
    /// A candidate extension attribute not on the allow-list, or with an invalid value.
    CandidateExtension,
    /// A key of a candidate or description object other than the ones a browser sends, or one
    /// of those with a wrong type or length.
    ObjectKey,
    /// The address (and user name) of the SDP `o=` line.
    SdpOrigin,
    /// An SDP `c=` address that was not one of our relays.
    SdpConnection,
    /// The address of an SDP `a=rtcp:` line.
    SdpRtcp,
    /// An SDP line dropped whole: `a=remote-candidates`, a malformed `a=fingerprint`, or any
    /// other line that contains an address literal.
    SdpLine,
}

impl SanitizedField {
    pub const ALL: [SanitizedField; 7] = [
        Self::RelatedAddress,
        Self::CandidateExtension,
        Self::ObjectKey,
        Self::SdpOrigin,
        Self::SdpConnection,
        Self::SdpRtcp,
        Self::SdpLine,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::RelatedAddress => "related_address",
            Self::CandidateExtension => "candidate_extension",
            Self::ObjectKey => "object_key",
            Self::SdpOrigin => "sdp_origin",
            Self::SdpConnection => "sdp_connection",
            Self::SdpRtcp => "sdp_rtcp",
            Self::SdpLine => "sdp_line",
        }
    }
}

/// Running totals since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrivacyTally {
    pub dropped: [u64; DropReason::ALL.len()],
    pub sanitized: [u64; SanitizedField::ALL.len()],
}

impl PrivacyTally {
    pub fn drop(&mut self, reason: DropReason) {
        // Debug, not info: a misconfigured client produces one per candidate. Never the address.
        tracing::debug!(reason = reason.label(), "dropped a candidate (force_relay)");
        self.dropped[reason as usize] += 1;
    }

    pub fn sanitize(&mut self, field: SanitizedField) {
        tracing::debug!(field = field.label(), "sanitized a signaling field (force_relay)");
        self.sanitized[field as usize] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }

    pub fn sanitized(&self, field: SanitizedField) -> u64 {
        self.sanitized[field as usize]
    }
}
