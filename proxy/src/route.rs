//! The routing decision, made in one place for every request the proxy routes — upgrades on the
//! fast path (a raw head, [`crate::head::RawHead`]) and on hyper's path, and plain HTTP: a
//! request head in; its key, the ring and the key's owner out ([`route`]), or why there is none
//! ([`Unrouted`]). An upgrade's request head for the owner is built here too
//! ([`Route::upgrade_request`]), from whichever head the client sent. No I/O.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Request;
use prometheus_client::metrics::gauge::Gauge;

use crate::key::{Key, KeyError, KeyInput, KeySources, extract_key};
use crate::state::{MemberRoute, Routing};
use crate::upstream;

/// Room for an upgrade's request head for the owner: a browser's upgrade request is about 500
/// bytes, and the proxy adds two fields.
const UPGRADE_HEAD_BYTES: usize = 1024;

/// A request head the proxy can forward as an upgrade: what key extraction reads, plus the
/// method and the fields as sent. Implemented for hyper's requests and the fast path's raw head.
pub trait RequestHead: KeyInput {
    /// The request method.
    fn method(&self) -> &str;
    /// The header fields as (name, value) byte pairs, in the order sent.
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])>;
}

impl<B> RequestHead for Request<B> {
    fn method(&self) -> &str {
        self.method().as_str()
    }

    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers()
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
    }
}

/// Why a request has no owner to go to; each is answered before anything reaches a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrouted {
    /// No valid key in the request (or a bad token).
    Key(KeyError),
    /// The proxy has no ring yet.
    NoRing,
    /// The ring has no active member.
    NoOwner,
    /// A browser's upgrade from an origin not in `allowedOrigins`.
    Origin,
    /// The client's address is over its upgrade rate (`limits.perIpUpgradesPerSecond`).
    RateLimited,
}

/// Checks an upgrade's `Origin` against `allowed` (compared case-insensitively): passes when
/// the list is empty or the request has no `Origin` (not a browser, so no ambient cookies to
/// abuse).
pub fn check_origin<I: KeyInput + ?Sized>(head: &I, allowed: &[String]) -> Result<(), Unrouted> {
    if allowed.is_empty() {
        return Ok(());
    }
    match head.header_values("origin").next() {
        None => Ok(()),
        Some(origin)
            if allowed
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(origin)) =>
        {
            Ok(())
        }
        Some(_) => Err(Unrouted::Origin),
    }
}

/// A request routed: its key and the owner the ring in use gives it.
#[derive(Debug)]
pub struct Route {
    /// The request's business key.
    pub key: Key,
    /// The routing table the owner was found in; the ring version it carries is the one
    /// routed with.
    routing: Arc<Routing>,
    /// The owner's index in `routing.members` (checked by [`route`]).
    owner: usize,
}

/// What a spliced connection keeps of its [`Route`] for its whole life: not the routing table,
/// which would keep every replaced ring in memory for as long as one of its connections lives.
#[derive(Debug)]
pub struct Target {
    /// The connection's business key (registered, then dropped).
    pub key: Key,
    /// The owner's member id, shared by every connection to it.
    pub member: Arc<str>,
    /// The owner's connection gauge.
    pub connections: Gauge,
    /// The ring version the connection was routed with.
    pub ring_version: u64,
}

/// Routes a request head: its key by the configured `keys`, then the owner under the ring in
/// `routing`. The one decision for both upgrade paths and plain HTTP.
pub fn route<I: KeyInput + ?Sized>(
    head: &I,
    keys: &KeySources,
    routing: &ArcSwap<Routing>,
) -> Result<Route, Unrouted> {
    let key = extract_key(head, keys).map_err(Unrouted::Key)?;
    let routing = routing.load_full();
    if !routing.known {
        return Err(Unrouted::NoRing);
    }
    let owner = routing
        .ring
        .owner_index(key.hash)
        .ok()
        .filter(|&i| i < routing.members.len())
        .ok_or(Unrouted::NoOwner)?;
    Ok(Route {
        key,
        routing,
        owner,
    })
}

impl Route {
    /// The key's owner.
    pub fn owner(&self) -> &MemberRoute {
        // In range: `route` checked the index against this very table.
        &self.routing.members[self.owner]
    }

    /// The version of the ring the request was routed with.
    pub fn ring_version(&self) -> u64 {
        self.routing.ring.version()
    }

    /// The upgrade request head for the owner, from the client's `head` (see
    /// [`upstream::write_request`] for what changes on the way): it carries this route's key
    /// and `secret`, the proxy secret (none in dev mode).
    pub fn upgrade_request(
        &self,
        head: &impl RequestHead,
        peer: IpAddr,
        secret: Option<&str>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(UPGRADE_HEAD_BYTES);
        upstream::write_request(
            &mut out,
            head.method(),
            head.target().path_and_query,
            head.fields(),
            peer,
            self.proxy_fields(secret),
        );
        out
    }

    /// The fields the proxy sets on whatever it forwards on this route.
    pub fn proxy_fields<'a>(&'a self, secret: Option<&'a str>) -> upstream::ProxyFields<'a> {
        upstream::ProxyFields {
            key: Some(&self.key.key),
            secret,
            ring_version: self.ring_version(),
        }
    }

    /// What the connection keeps once the owner switched protocols.
    pub fn into_target(self) -> Target {
        let owner = self.owner();
        Target {
            member: Arc::clone(&owner.id),
            connections: owner.connections.clone(),
            ring_version: self.ring_version(),
            key: self.key,
        }
    }
}

#[cfg(test)]
mod tests {
    use wscluster_ring::contract::split_target;
    use wscluster_ring::{Member, Ring, RingSnapshot};

    use super::*;
    use crate::config::ProxyConfig;
    use crate::head::{MAX_HEADERS, RawHead};
    use crate::metrics::Metrics;

    fn keys() -> KeySources {
        KeySources::from_specs(&ProxyConfig::default().key_sources).expect("default sources")
    }

    fn routing(members: Vec<Member>) -> ArcSwap<Routing> {
        let ring = Ring::build(RingSnapshot::new("t/c", 7, members)).expect("ring");
        ArcSwap::from_pointee(Routing::new(Arc::new(ring), &Metrics::new()))
    }

    fn three() -> Vec<Member> {
        (0..3)
            .map(|i| Member::active(format!("n-{i}"), format!("127.0.0.1:{}", 1000 + i)))
            .collect()
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));

    /// An upgrade request for `target` with a few fields, as a client would send it.
    fn raw_upgrade(target: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\nHost: chat\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n"
        )
    }

    /// The same request as hyper hands it to the proxy.
    fn hyper_upgrade(raw: &str) -> Request<()> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut fields);
        parsed.parse(raw.as_bytes()).expect("parses");
        let mut req = Request::builder()
            .method(parsed.method.expect("method"))
            .uri(parsed.path.expect("target"));
        for h in parsed.headers.iter() {
            req = req.header(h.name, h.value);
        }
        req.body(()).expect("request")
    }

    #[test]
    fn both_upgrade_paths_route_a_request_alike_and_send_the_owner_the_same_head() {
        let (keys, routing) = (keys(), routing(three()));
        for target in [
            "/connect/alice",
            "/connect/bob?since=4",
            "/ws?userId=carol&x=1",
            "/connect/dave#fragment",
            "/ws?userId=erin#frag?userId=mallory",
        ] {
            let raw = raw_upgrade(target);
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let fast = RawHead::parse(raw.as_bytes(), &mut fields).expect("fast path head");
            let hyper = hyper_upgrade(&raw);
            let a = route(&fast, &keys, &routing).expect("routed on the fast path");
            let b = route(&hyper, &keys, &routing).expect("routed on hyper's path");
            assert_eq!(a.key, b.key, "{target}");
            assert_eq!(a.owner().id, b.owner().id, "{target}");
            let (ha, hb) = (
                a.upgrade_request(&fast, PEER, Some("s")),
                b.upgrade_request(&hyper, PEER, Some("s")),
            );
            // hyper lowercases field names; everything else is the same, byte for byte.
            assert_eq!(
                String::from_utf8_lossy(&ha).to_ascii_lowercase(),
                String::from_utf8_lossy(&hb).to_ascii_lowercase(),
                "{target}"
            );
            assert!(!String::from_utf8_lossy(&ha).contains('#'), "{target}");
        }
    }

    #[test]
    fn the_owner_is_the_rings_and_the_target_keeps_its_id_and_version() {
        let (keys, routing) = (keys(), routing(three()));
        let raw = raw_upgrade("/connect/alice");
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = RawHead::parse(raw.as_bytes(), &mut fields).expect("head");
        let route = route(&head, &keys, &routing).expect("routed");
        let ring = Arc::clone(&routing.load().ring);
        assert_eq!(
            route.owner().id.as_ref(),
            ring.owner("alice").expect("owner").id
        );
        assert_eq!(route.ring_version(), 7);
        let target = route.into_target();
        assert_eq!(target.key.key, "alice");
        assert_eq!(
            target.member.as_ref(),
            ring.owner("alice").expect("owner").id
        );
        assert_eq!(target.ring_version, 7);
    }

    #[test]
    fn no_key_no_ring_and_no_active_member_are_each_their_own_answer() {
        let keys = keys();
        let missing = route(
            &hyper_upgrade(&raw_upgrade("/elsewhere")),
            &keys,
            &routing(three()),
        );
        assert!(matches!(
            missing,
            Err(Unrouted::Key(KeyError::Missing { .. }))
        ));
        let unknown = ArcSwap::from_pointee(Routing::unknown("t/c"));
        let alice = hyper_upgrade(&raw_upgrade("/connect/alice"));
        assert_eq!(
            route(&alice, &keys, &unknown).map(|_| ()),
            Err(Unrouted::NoRing)
        );
        let draining = routing(vec![Member::active("n-0", "127.0.0.1:1").draining()]);
        assert_eq!(
            route(&alice, &keys, &draining).map(|_| ()),
            Err(Unrouted::NoOwner)
        );
    }

    #[test]
    fn the_contracts_target_split_is_the_one_hyper_makes() {
        for target in [
            "/",
            "/connect/alice",
            "/ws?userId=a&b=c",
            "/ws?",
            "/ws?a=1?b=2",
            "/connect/alice#x",
            "/ws?userId=a#b",
            "/ws#frag?userId=a",
            "/a/b/c?%20=+#",
        ] {
            let uri: http::Uri = target.parse().expect("uri");
            let split = split_target(target);
            assert_eq!(split.path, uri.path(), "{target}");
            assert_eq!(split.query, uri.query(), "{target}");
            let pq = uri.path_and_query().map(|p| p.as_str());
            assert_eq!(Some(split.path_and_query), pq, "{target}");
        }
    }
}
