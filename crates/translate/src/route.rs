//! What every route kind shares: which of Portico's Gateways and listeners it attaches to, with which
//! hostnames, and the `status.parents` that says so. HTTPRoute, GRPCRoute and TLSRoute differ only in their
//! rules.

use crate::gateway::{GATEWAY_GROUP, GatewayInfo};
use crate::{Context, hostname, not, ok};
use portico_ir::Protocol;
use portico_resources::core::ObjectMeta;
use portico_resources::gateway::ParentReference;
use portico_resources::status::{Condition, ResourceStatus, RouteParentStatus, RouteStatus};
use portico_resources::{ObjectKey, ResourceRef};
use std::net::SocketAddr;

/// Rule problems that make a rule unusable (Accepted) or only some backends (ResolvedRefs).
#[derive(Default)]
pub struct RouteProblems {
    pub invalid_rules: Vec<String>,
    pub unresolved: Option<(&'static str, String)>,
}

impl RouteProblems {
    /// Records a backend problem; the first one names the ResolvedRefs reason.
    pub fn unresolved(&mut self, reason: &'static str, message: String) {
        if self.unresolved.is_none() {
            self.unresolved = Some((reason, message));
        }
    }
}

/// The parts of a route resource that decide attachment.
pub struct RouteSource<'a> {
    pub reference: &'a ResourceRef,
    pub metadata: &'a ObjectMeta,
    pub parent_refs: &'a [ParentReference],
    pub hostnames: &'a [String],
}

/// One socket and set of hostnames a route's rules go to.
pub struct Attachment {
    pub socket: SocketAddr,
    pub protocol: Protocol,
    pub owner: String,
    pub hostnames: Vec<String>,
    /// The listener passes TLS through (TLS listeners in Passthrough mode).
    pub passthrough: bool,
}

fn is_gateway_parent(parent: &ParentReference) -> bool {
    parent.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        && parent.kind.as_deref().unwrap_or("Gateway") == "Gateway"
}

/// Routes of one kind in precedence order for conflicts: oldest first, then by namespace/name.
pub fn oldest_first<T>(
    items: &std::collections::BTreeMap<ObjectKey, T>,
    meta: impl Fn(&T) -> &ObjectMeta,
) -> Vec<(&ObjectKey, &T)> {
    let mut sorted: Vec<(&ObjectKey, &T)> = items.iter().collect();
    sorted.sort_by(|(a_key, a), (b_key, b)| age_order((meta(a), a_key), (meta(b), b_key)));
    sorted
}

/// The order of resources in conflicts: the oldest first (no creation time counts as oldest), then by namespace
/// and name. Keys are compared in place: with 10,000 routes, a sort that cloned them made half a million copies.
pub fn age_order(a: (&ObjectMeta, &ObjectKey), b: (&ObjectMeta, &ObjectKey)) -> std::cmp::Ordering {
    let created = |meta: &ObjectMeta| meta.creation_timestamp.as_ref().map(|t| t.0);
    created(a.0).cmp(&created(b.0)).then_with(|| a.1.cmp(b.1))
}

/// Validates the route's hostnames, recording invalid ones as problems. Returns whether all are valid.
pub fn validate_hostnames(cx: &mut Context<'_>, source: &RouteSource<'_>, problems: &mut RouteProblems) -> bool {
    let mut valid = true;
    for (i, name) in source.hostnames.iter().enumerate() {
        if let Err(message) = hostname::validate(name) {
            cx.error(source.reference, format!("spec.hostnames[{i}]"), message);
            problems.invalid_rules.push(format!("hostname {name:?} is invalid"));
            valid = false;
        }
    }
    valid
}

/// Whether any parentRef names one of Portico's Gateways; warns about parentRefs to Gateways that do not
/// exist when none does.
pub fn is_ours(cx: &mut Context<'_>, gateways: &[GatewayInfo], source: &RouteSource<'_>) -> bool {
    let namespace = &source.reference.key.namespace;
    let ours = source.parent_refs.iter().filter(|p| is_gateway_parent(p)).any(|p| {
        let ns = p.namespace.as_deref().unwrap_or(namespace);
        gateways.iter().any(|g| g.reference.key.is(ns, &p.name))
    });
    if !ours {
        for (i, parent) in source.parent_refs.iter().enumerate() {
            let ns = parent.namespace.as_deref().unwrap_or(namespace);
            if is_gateway_parent(parent) && !cx.snapshot.gateways.contains_key(&ObjectKey::new(ns, &parent.name)) {
                cx.warning(
                    source.reference,
                    format!("spec.parentRefs[{i}]"),
                    format!("Gateway {ns}/{} does not exist", parent.name),
                );
            }
        }
    }
    ours
}

/// Attaches a route to the listeners its parentRefs select, counts it in their `attachedRoutes`, writes its
/// `status.parents`, and returns where its rules must go (nothing when it is not accepted).
pub fn attach(
    cx: &mut Context<'_>,
    gateways: &mut [GatewayInfo],
    source: &RouteSource<'_>,
    problems: &RouteProblems,
    usable: bool,
) -> Vec<Attachment> {
    let key = &source.reference.key;
    let kind = source.reference.kind.as_str();
    let generation = source.metadata.generation;
    // Statuses live as long as their configuration serves (and the status writer's copies longer): vectors
    // sized for what they hold, not the room for 4 of a first push (10,000 routes: 8 MB a status document).
    let mut parents = Vec::with_capacity(source.parent_refs.len());
    let mut attachments = Vec::new();
    for parent in source.parent_refs.iter().filter(|p| is_gateway_parent(p)) {
        let gateway_namespace = parent.namespace.as_deref().unwrap_or(&key.namespace);
        let Some(gateway) = gateways.iter_mut().find(|g| g.reference.key.is(gateway_namespace, &parent.name)) else {
            continue;
        };
        let candidates: Vec<usize> = (0..gateway.listeners.len())
            .filter(|&i| {
                let l = &gateway.listeners[i];
                parent.section_name.as_ref().is_none_or(|s| *s == l.name)
                    && parent.port.is_none_or(|p| i32::from(l.port) == p)
            })
            .collect();
        let admitted: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| gateway.listeners[i].admits(cx.snapshot, gateway_namespace, kind, &key.namespace))
            .collect();
        // Attachment depends on the parentRef, allowedRoutes and hostnames only, not on the listener's status:
        // a route attached to a listener that is not programmed still counts in its attachedRoutes.
        let attached: Vec<(usize, Vec<String>)> = admitted
            .iter()
            .filter_map(|&i| {
                hostname::intersect(gateway.listeners[i].hostname.as_deref(), source.hostnames).map(|h| (i, h))
            })
            .collect();
        // An HTTPRoute and a GRPCRoute whose hostnames intersect on a listener: only the older is accepted there
        // (routes come oldest first, so a claim already made by the other kind wins).
        let other_kind = match kind {
            "HTTPRoute" => Some("GRPCRoute"),
            "GRPCRoute" => Some("HTTPRoute"),
            _ => None,
        };
        // Only the other kind reads a claim: with no GRPCRoutes, HTTPRoutes record none.
        let record_claims = match kind {
            "HTTPRoute" => !cx.snapshot.grpc_routes.is_empty(),
            "GRPCRoute" => !cx.snapshot.http_routes.is_empty(),
            _ => false,
        };
        let mut conflicts = Vec::new();
        let serving: Vec<&(usize, Vec<String>)> = attached
            .iter()
            .filter(|(i, names)| {
                let claimant = other_kind.unwrap_or_default();
                let claims = gateway.listeners[*i].claims.get(claimant).map(Vec::as_slice).unwrap_or_default();
                let claim =
                    claims.iter().find(|(_, claimed)| names.iter().any(|n| claimed.iter().any(|c| overlap(n, c))));
                if let Some((by, _)) = claim {
                    conflicts.push(format!(
                        "{claimant} {by} already serves these hostnames on listener {}",
                        gateway.listeners[*i].name
                    ));
                }
                claim.is_none()
            })
            .collect();
        let accepted = if candidates.is_empty() {
            Err(("NoMatchingParent", "no listener matches the parentRef's sectionName and port".to_string()))
        } else if admitted.is_empty() {
            Err(("NotAllowedByListeners", format!("the listeners' allowedRoutes do not admit this {kind}")))
        } else if attached.is_empty() {
            Err(("NoMatchingListenerHostname", "no listener hostname intersects the route's hostnames".to_string()))
        } else if serving.is_empty() {
            Err(("Conflicted", conflicts.join("; ")))
        } else if !usable {
            Err(("UnsupportedValue", problems.invalid_rules.join("; ")))
        } else if !serving.iter().any(|(i, _)| gateway.listeners[*i].ready) {
            Err((
                "NoReadyListeners",
                "the route attaches only to listeners that are not programmed (see the Gateway's status)".to_string(),
            ))
        } else {
            Ok(())
        };
        let mut conditions = Vec::with_capacity(2);
        match &accepted {
            Ok(()) => conditions.push(ok("Accepted", "Accepted", "Route accepted", generation)),
            Err((reason, message)) => conditions.push(not("Accepted", reason, message.clone(), generation)),
        }
        match &problems.unresolved {
            None => conditions.push(ok("ResolvedRefs", "ResolvedRefs", "References resolved", generation)),
            Some((reason, message)) => conditions.push(not("ResolvedRefs", reason, message.clone(), generation)),
        }
        if accepted.is_ok() && !problems.invalid_rules.is_empty() {
            conditions.push(Condition::new(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                format!("rules dropped: {}", problems.invalid_rules.join("; ")),
                generation,
            ));
        }
        // Routes that are themselves not accepted (say, every rule invalid) count as attached too, as the spec
        // of attachedRoutes requires.
        for (listener_index, _) in &attached {
            gateway.listeners[*listener_index].attached_routes += 1;
        }
        if accepted.is_ok() {
            for (listener_index, hostnames) in serving.into_iter().cloned() {
                if record_claims {
                    let claims = gateway.listeners[listener_index].claims.entry(kind).or_default();
                    claims.push((key.to_string(), hostnames.clone()));
                }
                let listener = &gateway.listeners[listener_index];
                let Some(protocol) = listener.protocol.filter(|_| listener.ready) else {
                    continue;
                };
                for ip in &gateway.addresses {
                    attachments.push(Attachment {
                        socket: SocketAddr::new(*ip, listener.port),
                        protocol,
                        owner: gateway.owner.clone(),
                        hostnames: hostnames.clone(),
                        passthrough: listener.passthrough,
                    });
                }
            }
        }
        parents.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: cx.options.gateway_controller.clone(),
            conditions,
        });
    }
    // Fewer when a parentRef names no Gateway of Portico's: a no-op otherwise.
    parents.shrink_to_fit();
    cx.set_status(source.reference.clone(), ResourceStatus::Route(RouteStatus { parents }));
    attachments
}

/// Whether two hostnames (exact, `*.suffix` or `*`) can name the same host.
fn overlap(a: &str, b: &str) -> bool {
    a == "*" || b == "*" || hostname::covers(a, b) || hostname::covers(b, a)
}
