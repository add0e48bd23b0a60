//! Portico's DNS: an authoritative server for the load balancer's zones, and an external-dns compatible sync
//! that publishes records into a corporate DNS server by RFC 2136 dynamic update with TSIG.
//!
//! Both take the same plain record model ([`DesiredRecord`]), so the control plane can feed them from the IR.
//!
//! - [`DnsServer::start`] serves zones over UDP and TCP (hickory-server); [`DnsServerHandle::update`] swaps
//!   every zone's records atomically and bumps a zone's SOA serial only when its records changed.
//! - [`Syncer`] reads a zone by TSIG-signed AXFR, plans the changes with external-dns's TXT registry
//!   ([`TxtRegistry`]) so that only records Portico owns are touched, and applies them in batched UPDATE
//!   messages; [`Syncer::plan`] is the dry-run. Signing is pluggable ([`MessageSigner`]) for GSS-TSIG later.

#![warn(missing_docs)]

mod error;
mod model;
mod packet_cache;
mod plan;
mod registry;
mod runner;
mod server;
mod signer;
mod sync;

pub use error::{RecordError, ServerError, SyncError, TsigFailure};
pub use model::{DEFAULT_TTL, DesiredRecord, RecordKind, ZoneConfig};
pub use plan::{
    Action, Change, Conflict, ConflictReason, Plan, PlanOptions, Policy, Prerequisite, RecordState, RecordStatus, Rr,
    RrSet, ZoneState, compute_plan,
};
pub use registry::{OWNER_LABEL, RESOURCE_LABEL, TxtRegistry, parse_labels, serialize_labels};
pub use runner::{SyncLoop, SyncLoopStatus};
pub use server::{DnsServer, DnsServerHandle, UpdateReport, ZoneView};
pub use signer::{BoxFuture, MessageSigner, ResponseVerifier, SignedRequest, TsigAlg, TsigKey, TsigSigner, Unsigned};
pub use sync::{ApplyReport, RetryPolicy, SyncConfig, SyncReport, Syncer, parse_kinds, statuses_after_error};
