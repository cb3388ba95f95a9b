//! Ring changes through the real proxy binary: exactly the moved connections are reset, paced,
//! with the documented frame and close code; drains, idle closes, shutdown, and the ring
//! stream going away.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use wscluster_ring::{Ring, RingSnapshot};
use wscluster_ring_stream::{RingHub, serve};

/// A connection a test opened through the proxy.
struct Open {
    /// Its key.
    key: String,
    /// The socket.
    ws: Ws,
}

/// Opens `n` connections with keys `user-0..n`.
async fn open(proxy: &Proxy, n: usize) -> Vec<Open> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("user-{i}");
        let (ws, _) = connect(&proxy.ws_url(&format!("/connect/{key}"))).await;
        out.push(Open { key, ws });
    }
    out
}

/// The keys of the sessions `backends` saw closed, each with close code 1001 (going away):
/// waits until `want` are in or 10 s have passed, then takes any already reported on top, so
/// a close too many shows.
async fn closed_keys(backends: &mut [Backend], want: usize) -> HashSet<String> {
    let mut closed = HashSet::new();
    let mut note = |event: BackendEvent| {
        if let BackendEvent::Closed { path, code } = event {
            assert_eq!(code, Some(1001), "{path}");
            closed.insert(path.trim_start_matches("/connect/").to_string());
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = 0;
    while seen < want && tokio::time::Instant::now() < deadline {
        for b in backends.iter_mut() {
            if let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(50), b.events.recv()).await
            {
                seen += usize::from(matches!(event, BackendEvent::Closed { .. }));
                note(event);
            }
        }
    }
    for b in backends.iter_mut() {
        while let Ok(event) = b.events.try_recv() {
            note(event);
        }
    }
    closed
}

/// The keys of `conns` whose owner under `new` is not their owner under `old`.
fn moved_keys(conns: &[Open], old: &Ring, new: &Ring) -> HashSet<String> {
    conns
        .iter()
        .filter(|c| old.owner(&c.key).expect("o").id != new.owner(&c.key).expect("o").id)
        .map(|c| c.key.clone())
        .collect()
}

#[tokio::test]
async fn a_ring_change_resets_exactly_the_moved_connections_and_no_others() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let config = "resets: {ratePerSecond: 1000, jitterMs: 500}";
        let BehindProxy {
            mut backends,
            ring_path,
            ring: r1,
            proxy,
            ..
        } = BehindProxy::start("exact", &["node-a", "node-b", "node-c"], config, 1).await;
        let mut conns = open(&proxy, 120).await;

        backends.push(Backend::start("node-d").await);
        let v2 = write_ring(
            &ring_path,
            2,
            backends.iter().map(Backend::member).collect(),
        );
        let moved = moved_keys(&conns, &r1, &Ring::build(v2).expect("v2"));
        assert!(
            !moved.is_empty() && moved.len() < conns.len(),
            "{}",
            moved.len()
        );
        proxy.wait_ring_version(2).await;

        for c in conns.iter_mut().filter(|c| moved.contains(&c.key)) {
            let ending = read_ending(&mut c.ws, Duration::from_secs(10)).await;
            let key = &c.key;
            let reset = ending
                .reset
                .unwrap_or_else(|| panic!("{key}: no reset frame"));
            assert_eq!(reset["reason"], "rebalance");
            assert_eq!(reset["ringVersion"], 2);
            let retry = reset["retryAfterMs"].as_u64().expect("retryAfterMs");
            assert!(retry <= 500, "{retry}");
            assert_eq!(ending.code, Some(4000), "{key}");
        }
        // Everyone else is untouched and still spliced to the same backend.
        for c in conns.iter_mut().filter(|c| !moved.contains(&c.key)) {
            echo(&mut c.ws, &format!("still {}", c.key)).await;
        }
        let resets = proxy
            .metric("wscluster_proxy_resets_total{reason=\"rebalance\"}")
            .await;
        assert_eq!(resets, Some(moved.len() as f64));
        // The backends saw a clean close (1001 going away) for exactly the moved keys.
        assert_eq!(closed_keys(&mut backends[..3], moved.len()).await, moved);
        // Reconnecting lands on the new owner.
        for key in moved.iter().take(5) {
            let (_ws, id) = connect(&proxy.ws_url(&format!("/connect/{key}"))).await;
            assert_eq!(id, "node-d");
        }
    })
    .await
    .expect("test finished in time");
}

/// Asserts that resets ending at `times` came `1 / rate` apart: the whole set over about
/// (n-1)/rate, and no burst (at most rate/4 + 2 in any 250 ms window).
fn assert_paced(mut times: Vec<tokio::time::Instant>, rate: f64) {
    times.sort();
    let span = times[times.len() - 1] - times[0];
    let expected = Duration::from_secs_f64((times.len() - 1) as f64 / rate);
    assert!(
        span >= expected.mul_f64(0.8),
        "span {span:?} < {expected:?}"
    );
    assert!(
        span <= expected.mul_f64(2.0) + Duration::from_secs(1),
        "span {span:?}"
    );
    let most_per_window = (rate / 4.0) as usize + 2;
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| **u - *t < Duration::from_millis(250))
            .count();
        assert!(
            in_window <= most_per_window,
            "{in_window} resets within 250 ms"
        );
    }
}

/// Asserts that the `retryAfterMs` values are spread over `[0, 3000]`.
fn assert_spread_over_3000_ms(retries: &[u64]) {
    assert!(retries.iter().all(|r| *r <= 3000));
    let distinct: HashSet<_> = retries.iter().collect();
    assert!(distinct.len() > 20, "retryAfterMs not spread: {retries:?}");
    let (lo, hi) = (retries.iter().min(), retries.iter().max());
    assert!(lo < Some(&1000) && hi > Some(&2000), "{lo:?}..{hi:?}");
}

#[tokio::test]
async fn pacing_spreads_resets_over_the_configured_rate_and_jitter() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let config = "resets: {mode: fixed, ratePerSecond: 20, jitterMs: 3000}";
        let BehindProxy {
            backends,
            ring_path,
            proxy,
            ..
        } = BehindProxy::start("pacing", &["node-a"], config, 1).await;
        let b = Backend::start("node-b").await;
        let mut conns = open(&proxy, 40).await;
        // Drain node-a: every connection moves, with reason "drain".
        write_ring(
            &ring_path,
            2,
            vec![backends[0].member().draining(), b.member()],
        );
        proxy.wait_ring_version(2).await;
        let mut endings = Vec::new();
        for c in conns.iter_mut() {
            endings.push(read_ending(&mut c.ws, Duration::from_secs(20)).await);
        }
        assert_paced(endings.iter().map(|e| e.at).collect(), 20.0);
        let retries: Vec<u64> = endings
            .iter()
            .map(|e| {
                let r = e.reset.as_ref().expect("reset frame");
                assert_eq!(r["reason"], "drain");
                r["retryAfterMs"].as_u64().expect("retry")
            })
            .collect();
        assert!(endings.iter().all(|e| e.code == Some(4001)));
        assert_spread_over_3000_ms(&retries);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn adaptive_pacing_speeds_up_while_the_new_owner_answers_its_upgrades() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // At the start (and lowest) rate the 200 resets would take 4 s; the target is loose so
        // a loaded debug build still counts as fast.
        let config = "resets: {startRatePerSecond: 50, minRatePerSecond: 50, ratePerSecond: 2000, upgradeLatencyTargetMs: 1000, jitterMs: 3000}";
        let BehindProxy {
            backends,
            ring_path,
            proxy,
            ..
        } = BehindProxy::start("adaptive", &["node-a"], config, 1).await;
        let b = Backend::start("node-b").await;
        let conns = open(&proxy, 200).await;
        // Each client comes straight back (ignoring retryAfterMs): the upgrades to node-b are
        // what the pacer watches.
        let comebacks: Vec<_> = conns
            .into_iter()
            .map(|mut c| {
                let url = proxy.ws_url(&format!("/connect/{}", c.key));
                tokio::spawn(async move {
                    let ending = read_ending(&mut c.ws, Duration::from_secs(20)).await;
                    let (_ws, owner) = connect(&url).await;
                    (ending, owner)
                })
            })
            .collect();
        write_ring(
            &ring_path,
            2,
            vec![backends[0].member().draining(), b.member()],
        );
        let mut endings = Vec::new();
        for comeback in comebacks {
            let (ending, owner) = comeback.await.expect("client task");
            assert_eq!(owner, "node-b");
            endings.push(ending);
        }
        let times: Vec<_> = endings.iter().map(|e| e.at).collect();
        let span = *times.iter().max().expect("some") - *times.iter().min().expect("some");
        assert!(span < Duration::from_millis(2500), "200 resets took {span:?}");
        let retries: Vec<u64> = endings
            .iter()
            .map(|e| e.reset.as_ref().expect("reset frame")["retryAfterMs"].as_u64().expect("retry"))
            .collect();
        // Within jitterMs and spread: the first resets (4 s of queue at 50/s) wait up to 3 s,
        // the last almost none.
        assert!(retries.iter().all(|r| *r <= 3000), "{retries:?}");
        let distinct: HashSet<_> = retries.iter().collect();
        assert!(distinct.len() > 20, "retryAfterMs not spread: {retries:?}");
        let upgrades = proxy
            .metric("wscluster_proxy_upstream_upgrade_seconds_count{member=\"node-b\"}")
            .await;
        assert_eq!(upgrades, Some(200.0));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let config = "limits: {idleTimeoutSeconds: 2}";
        let behind = BehindProxy::start("idle", &["node-a"], config, 1).await;
        let proxy = &behind.proxy;
        let (mut idle, _) = connect(&proxy.ws_url("/connect/idle")).await;
        let (mut busy, _) = connect(&proxy.ws_url("/connect/busy")).await;
        let started = tokio::time::Instant::now();
        let ending = {
            let idle_end = read_ending(&mut idle, Duration::from_secs(10));
            tokio::pin!(idle_end);
            loop {
                tokio::select! {
                    e = &mut idle_end => break e,
                    () = tokio::time::sleep(Duration::from_millis(300)) => echo(&mut busy, "tick").await,
                }
            }
        };
        assert_eq!(ending.code, Some(1001));
        assert!(ending.reset.is_none());
        assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
        echo(&mut busy, "still alive").await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn shutdown_waits_the_grace_period_then_resets_with_reason_drain() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let config = "drainTimeoutSeconds: 1";
        let mut behind = BehindProxy::start("shutdown", &["node-a"], config, 1).await;
        let proxy = &mut behind.proxy;
        let (mut ws, _) = connect(&proxy.ws_url("/connect/alice")).await;
        let pid = proxy.pid().to_string();
        let killed = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill");
        assert!(killed.success());
        // During the grace period the connection still works and readiness is off.
        echo(&mut ws, "during grace").await;
        let (status, _) = proxy.admin_get("/readyz").await;
        assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
        let ending = read_ending(&mut ws, Duration::from_secs(10)).await;
        assert_eq!(ending.code, Some(4001));
        assert_eq!(ending.reset.expect("reset")["reason"], "drain");
        let status = tokio::time::timeout(Duration::from_secs(15), proxy.child.wait())
            .await
            .expect("proxy exited")
            .expect("status");
        assert!(status.success(), "{status:?}");
    })
    .await
    .expect("test finished in time");
}

/// The ring stream served from a [`RingHub`] on a listener, until stopped.
struct HubServer {
    /// Stops it.
    stop: tokio_util::sync::CancellationToken,
    /// Its task, done once stopped.
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HubServer {
    fn start(listener: tokio::net::TcpListener, hub: &Arc<RingHub>) -> HubServer {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(serve(listener, Arc::clone(hub), stop.clone()));
        HubServer { stop, task }
    }

    /// Stops serving and waits until it has.
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Waits until the test proxy has acknowledged ring `version` on `hub`.
async fn wait_for_ack(hub: &RingHub, version: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let subs = hub.subscribers(CLUSTER);
        if subs
            .iter()
            .any(|s| s.id == "test-proxy" && s.applied_version == Some(version))
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no ack: {subs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `proxy` reports its ring stream disconnected.
async fn wait_for_stream_down(proxy: &Proxy) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while proxy.metric("wscluster_proxy_ring_stream_connected").await != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream never seen down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_stream_going_down_keeps_the_last_ring_and_reconnecting_applies_newer_ones() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let a = Backend::start("node-a").await;
        let b = Backend::start("node-b").await;
        let token = "test-token";
        let hub = RingHub::new();
        hub.set_token(CLUSTER, token.to_string());
        hub.publish(RingSnapshot::new(CLUSTER, 1, vec![a.member()]))
            .expect("publish");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let hub_addr = listener.local_addr().expect("addr");
        let server = HubServer::start(listener, &hub);
        let url = format!("http://{hub_addr}");
        let dir = temp_dir("stream");
        let proxy = Proxy::spawn(&dir, "", support::Ring::Url(&url, token)).await;
        proxy.wait_ring_version(1).await;
        // The proxy reports the version it applied.
        wait_for_ack(&hub, 1).await;
        let (mut ws, id) = connect(&proxy.ws_url("/connect/alice")).await;
        assert_eq!(id, "node-a");

        // The stream goes away: routing continues on the last ring.
        server.stop().await;
        wait_for_stream_down(&proxy).await;
        echo(&mut ws, "still routed").await;
        let (_ws2, id) = connect(&proxy.ws_url("/connect/bob")).await;
        assert_eq!(id, "node-a");
        let (status, _) = proxy.admin_get("/readyz").await;
        assert_eq!(status, http::StatusCode::OK);

        // The stream comes back on the same address with a newer ring: applied, and the moved
        // connection is reset.
        hub.publish(RingSnapshot::new(
            CLUSTER,
            2,
            vec![a.member().draining(), b.member()],
        ))
        .expect("publish");
        let listener = tokio::net::TcpListener::bind(hub_addr)
            .await
            .expect("rebind");
        let server = HubServer::start(listener, &hub);
        proxy.wait_ring_version(2).await;
        let ending = read_ending(&mut ws, Duration::from_secs(10)).await;
        assert_eq!(ending.code, Some(4001));
        let (_ws3, id) = connect(&proxy.ws_url("/connect/alice")).await;
        assert_eq!(id, "node-b");
        server.stop().await;
    })
    .await
    .expect("test finished in time");
}
