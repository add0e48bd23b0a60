//! Errors of the DNS server, the record model and the sync.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::model::RecordKind;

/// A desired record that cannot be served or published.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RecordError {
    /// The name is not a valid DNS name.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A target does not fit the record type.
    #[error("{name} {kind}: invalid target {target:?}: {reason}")]
    InvalidTarget {
        /// Record name.
        name: String,
        /// Record type.
        kind: RecordKind,
        /// The target as given.
        target: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The record has no targets.
    #[error("{name} {kind}: no targets")]
    NoTargets {
        /// Record name.
        name: String,
        /// Record type.
        kind: RecordKind,
    },
    /// A CNAME with more than one target.
    #[error("{name} CNAME: a CNAME has exactly one target, got {targets:?}")]
    MultipleCnameTargets {
        /// Record name.
        name: String,
        /// The targets given.
        targets: Vec<String>,
    },
    /// A record type Portico does not manage.
    #[error("unsupported record type {0:?} (Portico manages A, AAAA, CNAME and TXT)")]
    UnsupportedKind(String),
}

/// The DNS server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A zone's configuration is unusable.
    #[error("zone {origin:?}: {reason}")]
    InvalidZone {
        /// The zone's origin as configured.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// No address to listen on was given.
    #[error("the DNS server needs at least one listen address")]
    NoListenAddress,
    /// A socket could not be bound.
    #[error("cannot bind the DNS server's {protocol} socket on {addr}: {source}")]
    Bind {
        /// `UDP` or `TCP`.
        protocol: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// Why a TSIG-protected exchange failed, as the server reported it (RFC 8945 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigFailure {
    /// BADSIG: the server knows the key name, but the MAC does not verify (wrong secret or algorithm).
    BadSig,
    /// BADKEY: the server does not know the key name or its algorithm.
    BadKey,
    /// BADTIME: the clocks of the two machines differ by more than the fudge.
    BadTime,
    /// Another TSIG error code.
    Other(u16),
}

/// A sync to the corporate DNS server failed.
#[derive(Debug, Error)]
pub enum SyncError {
    /// The sync configuration is unusable.
    #[error("invalid DNS sync configuration: {0}")]
    Config(String),
    /// No TCP connection to the server.
    #[error("DNS server {server} is unreachable ({operation} for zone {zone}): {source}")]
    Unreachable {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// `zone transfer (AXFR)` or `update`.
        operation: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The server did not answer in time.
    #[error("DNS server {server} did not answer the {operation} for zone {zone} within {timeout:?}")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The operation.
        operation: &'static str,
        /// The time waited.
        timeout: Duration,
    },
    /// The server rejected the request's TSIG signature.
    #[error("DNS server {server} rejected the TSIG signature of the {operation} for zone {zone}: {}", tsig_message(*.failure, key))]
    Tsig {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The operation.
        operation: &'static str,
        /// The signer's description (key name and algorithm).
        key: String,
        /// What the server said.
        failure: TsigFailure,
    },
    /// The server refused the request (REFUSED): the key is not allowed for this zone or operation.
    #[error(
        "DNS server {server} refused the {operation} for zone {zone} (REFUSED): {key} is not allowed to do this \
         (check the zone's allow-update / allow-transfer for this key)"
    )]
    Refused {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The operation.
        operation: &'static str,
        /// The signer's description.
        key: String,
    },
    /// The server is not authoritative for the zone.
    #[error("DNS server {server} is not authoritative for zone {zone} (NOTAUTH to the {operation})")]
    NotAuthoritative {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The operation.
        operation: &'static str,
    },
    /// A prerequisite of an update failed: the zone changed since it was read.
    #[error(
        "zone {zone} on {server} changed since it was read (the update's prerequisite failed with {rcode}); \
         it is read again before the next attempt"
    )]
    ZoneChanged {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The response code (YXDOMAIN, YXRRSET, NXRRSET, NXDOMAIN).
        rcode: String,
    },
    /// Another error response code.
    #[error("DNS server {server} answered {rcode} to the {operation} for zone {zone}")]
    Rcode {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The operation.
        operation: &'static str,
        /// The response code.
        rcode: String,
    },
    /// The response's TSIG signature did not verify: it was not sent by a holder of the key.
    #[error(
        "the response of DNS server {server} to the {operation} for zone {zone} failed TSIG verification: {reason}"
    )]
    ResponseVerification {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The operation.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// The response could not be read.
    #[error("malformed response from DNS server {server} to the {operation} for zone {zone}: {reason}")]
    Protocol {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The operation.
        operation: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The request could not be signed or encoded.
    #[error("cannot sign or encode the {operation} for zone {zone}: {reason}")]
    Sign {
        /// The zone.
        zone: String,
        /// The operation.
        operation: &'static str,
        /// Why.
        reason: String,
    },
}

impl SyncError {
    /// Whether trying again later may succeed without a change of configuration (network trouble, a server
    /// error, a zone that changed under us). Authentication and permission errors are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::Unreachable { .. }
            | SyncError::Timeout { .. }
            | SyncError::ZoneChanged { .. }
            | SyncError::Protocol { .. } => true,
            SyncError::Rcode { rcode, .. } => rcode == "SERVFAIL",
            SyncError::Tsig { failure, .. } => *failure == TsigFailure::BadTime,
            _ => false,
        }
    }
}

fn tsig_message(failure: TsigFailure, key: &str) -> String {
    match failure {
        TsigFailure::BadSig => {
            format!("BADSIG: the secret or algorithm of {key} does not match the server's (wrong TSIG key)")
        }
        TsigFailure::BadKey => format!("BADKEY: the server does not know {key} (wrong key name or algorithm)"),
        TsigFailure::BadTime => {
            format!("BADTIME: the clocks of this machine and the server differ by more than the fudge of {key}")
        }
        TsigFailure::Other(code) => format!("TSIG error {code} for {key}"),
    }
}

/// Maps hickory's TSIG verification messages to what they mean. hickory reports an unsigned error response
/// (BADSIG/BADKEY, whose MAC is empty) as "Please file an issue ... to support truncated HMACs", which misleads.
pub(crate) fn explain_tsig_verify_error(message: &str) -> String {
    if message.contains("truncated HMAC") {
        "the response carries an empty or truncated MAC: the server could not verify our signature \
         (wrong TSIG key or algorithm)"
            .to_string()
    } else if message.contains("outdated") {
        "the response's TSIG time is outside the fudge window (clock skew)".to_string()
    } else {
        message.to_string()
    }
}
