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

/// Opens `n` connections with keys `user-0..n`; returns them with their keys and backends.
async fn open(proxy: &Proxy, n: usize) -> Vec<(String, Ws, String)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("user-{i}");
        let (ws, id) = connect(&proxy.ws_url(&format!("/connect/{key}"))).await;
        out.push((key, ws, id));
    }
    out
}

#[tokio::test]
async fn a_ring_change_resets_exactly_the_moved_connections_and_no_others() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut backends = vec![
            Backend::start("node-a").await,
            Backend::start("node-b").await,
            Backend::start("node-c").await,
        ];
        let dir = temp_dir("exact");
        let ring_path = dir.join("ring.json");
        let v1 = write_ring(
            &ring_path,
            1,
            backends.iter().map(Backend::member).collect(),
        );
        let proxy = Proxy::spawn(
            &dir,
            "resets: {ratePerSecond: 1000, jitterMs: 500}",
            support::Ring::File(&ring_path),
        )
        .await;
        proxy.wait_ring_version(1).await;
        let mut conns = open(&proxy, 120).await;

        backends.push(Backend::start("node-d").await);
        let v2 = write_ring(
            &ring_path,
            2,
            backends.iter().map(Backend::member).collect(),
        );
        let (r1, r2) = (Ring::build(v1).expect("v1"), Ring::build(v2).expect("v2"));
        let moved: HashSet<String> = conns
            .iter()
            .filter(|(k, _, _)| r1.owner(k).expect("o").id != r2.owner(k).expect("o").id)
            .map(|(k, _, _)| k.clone())
            .collect();
        assert!(
            !moved.is_empty() && moved.len() < conns.len(),
            "{}",
            moved.len()
        );
        proxy.wait_ring_version(2).await;

        for (key, ws, _) in conns.iter_mut().filter(|(k, _, _)| moved.contains(k)) {
            let ending = read_ending(ws, Duration::from_secs(10)).await;
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
        for (key, ws, _) in conns.iter_mut().filter(|(k, _, _)| !moved.contains(k)) {
            echo(ws, &format!("still {key}")).await;
        }
        let resets = proxy
            .metric("wscluster_proxy_resets_total{reason=\"rebalance\"}")
            .await;
        assert_eq!(resets, Some(moved.len() as f64));
        // The backends saw a clean close (1001 going away) for exactly the moved keys.
        let mut closed = HashSet::new();
        for b in backends.iter_mut().take(3) {
            while let Ok(ev) = b.events.try_recv() {
                if let BackendEvent::Closed { path, code } = ev {
                    assert_eq!(code, Some(1001), "{path}");
                    closed.insert(path.trim_start_matches("/connect/").to_string());
                }
            }
        }
        // Closes may still be in flight; wait for the rest with a deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while closed.len() < moved.len() && tokio::time::Instant::now() < deadline {
            for b in backends.iter_mut().take(3) {
                if let Ok(Some(BackendEvent::Closed { path, code })) =
                    tokio::time::timeout(Duration::from_millis(50), b.events.recv()).await
                {
                    assert_eq!(code, Some(1001), "{path}");
                    closed.insert(path.trim_start_matches("/connect/").to_string());
                }
            }
        }
        assert_eq!(closed, moved);
        // Reconnecting lands on the new owner.
        for key in moved.iter().take(5) {
            let (_ws, id) = connect(&proxy.ws_url(&format!("/connect/{key}"))).await;
            assert_eq!(id, "node-d");
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn pacing_spreads_resets_over_the_configured_rate_and_jitter() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let a = Backend::start("node-a").await;
        let b = Backend::start("node-b").await;
        let dir = temp_dir("pacing");
        let ring_path = dir.join("ring.json");
        write_ring(&ring_path, 1, vec![a.member()]);
        let rate = 20.0;
        let proxy = Proxy::spawn(
            &dir,
            "resets: {ratePerSecond: 20, jitterMs: 3000}",
            support::Ring::File(&ring_path),
        )
        .await;
        proxy.wait_ring_version(1).await;
        let mut conns = open(&proxy, 40).await;
        // Drain node-a: every connection moves, with reason "drain".
        write_ring(&ring_path, 2, vec![a.member().draining(), b.member()]);
        proxy.wait_ring_version(2).await;
        let mut endings = Vec::new();
        for (_, ws, _) in conns.iter_mut() {
            endings.push(read_ending(ws, Duration::from_secs(20)).await);
        }
        let mut times: Vec<_> = endings.iter().map(|e| e.at).collect();
        times.sort();
        let span = times[times.len() - 1] - times[0];
        let expected = Duration::from_secs_f64((endings.len() - 1) as f64 / rate);
        // Resets arrive at the configured rate: the whole set takes about (n-1)/rate.
        assert!(
            span >= expected.mul_f64(0.8),
            "span {span:?} < {expected:?}"
        );
        assert!(
            span <= expected.mul_f64(2.0) + Duration::from_secs(1),
            "span {span:?}"
        );
        // No burst: in any 250 ms window at most rate/4 + 2 resets.
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| **u - *t < Duration::from_millis(250))
                .count();
            assert!(in_window <= 7, "{in_window} resets within 250 ms");
        }
        let retries: Vec<u64> = endings
            .iter()
            .map(|e| {
                let r = e.reset.as_ref().expect("reset frame");
                assert_eq!(r["reason"], "drain");
                r["retryAfterMs"].as_u64().expect("retry")
            })
            .collect();
        assert!(endings.iter().all(|e| e.code == Some(4001)));
        assert!(retries.iter().all(|r| *r <= 3000));
        let distinct: HashSet<_> = retries.iter().collect();
        assert!(distinct.len() > 20, "retryAfterMs not spread: {retries:?}");
        let (lo, hi) = (retries.iter().min(), retries.iter().max());
        assert!(lo < Some(&1000) && hi > Some(&2000), "{lo:?}..{hi:?}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let a = Backend::start("node-a").await;
        let dir = temp_dir("idle");
        let ring_path = dir.join("ring.json");
        write_ring(&ring_path, 1, vec![a.member()]);
        let proxy = Proxy::spawn(
            &dir,
            "limits: {idleTimeoutSeconds: 2}",
            support::Ring::File(&ring_path),
        )
        .await;
        proxy.wait_ring_version(1).await;
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
        let a = Backend::start("node-a").await;
        let dir = temp_dir("shutdown");
        let ring_path = dir.join("ring.json");
        write_ring(&ring_path, 1, vec![a.member()]);
        let mut proxy = Proxy::spawn(
            &dir,
            "drainTimeoutSeconds: 1",
            support::Ring::File(&ring_path),
        )
        .await;
        proxy.wait_ring_version(1).await;
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
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::clone(&hub), stop.clone()));
        let url = format!("http://{hub_addr}");
        let dir = temp_dir("stream");
        let proxy = Proxy::spawn(&dir, "", support::Ring::Url(&url, token)).await;
        proxy.wait_ring_version(1).await;
        // The proxy reports the version it applied.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let subs = hub.subscribers(CLUSTER);
            if subs
                .iter()
                .any(|s| s.id == "test-proxy" && s.applied_version == Some(1))
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no ack: {subs:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (mut ws, id) = connect(&proxy.ws_url("/connect/alice")).await;
        assert_eq!(id, "node-a");

        // The stream goes away: routing continues on the last ring.
        stop.cancel();
        let _ = server.await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while proxy.metric("wscluster_proxy_ring_stream_connected").await != Some(0.0) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stream never seen down"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(serve(listener, Arc::clone(&hub), stop.clone()));
        proxy.wait_ring_version(2).await;
        let ending = read_ending(&mut ws, Duration::from_secs(10)).await;
        assert_eq!(ending.code, Some(4001));
        let (_ws3, id) = connect(&proxy.ws_url("/connect/alice")).await;
        assert_eq!(id, "node-b");
        stop.cancel();
    })
    .await
    .expect("test finished in time");
}
