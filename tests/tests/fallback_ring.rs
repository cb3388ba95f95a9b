//! No cold start depends on the ring authority (issue 16 §3), across real processes (local
//! mode, 3 nodes, 2 proxies, real Redis and RabbitMQ): the supervisor writes every ring it
//! publishes into `ring.json` in the run directory, which every child reads beside the stream
//! (`--ring-file`). With the authority stopped, a restarted proxy starts from that file: it is
//! ready, says on `/metrics` that its ring came from the file, and its clients reach their
//! owners at once. Without the fallback it would have no ring and answer 503 until the
//! authority returned.

use std::time::{Duration, Instant};

use wscluster_ring::RingSnapshot;
use wscluster_tests::http::get_json;
use wscluster_tests::{Fleet, Local, LocalOptions, run_bounded, wait_for};

/// Clients connected through the restarted proxy.
const CLIENTS: usize = 40;
/// How long the restarted proxy's clients may take to reach their owners: a process start
/// (about a second here) plus the clients' reconnect backoff; without a ring they never would.
const ROUTE_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restarted_while_the_authority_is_down_routes_from_the_fallback_ring_file() {
    run_bounded(Duration::from_secs(180), scenario()).await;
}

async fn scenario() -> anyhow::Result<()> {
    let local = Local::start(LocalOptions::real_backends("fallback", 3, 2)).await?;
    let ring = local.ring().await?;
    let dir = local
        .log_dir
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the harness chose no run directory"))?;
    let text = std::fs::read_to_string(dir.join("ring.json"))?;
    let written = RingSnapshot::from_json(&text)?;
    anyhow::ensure!(
        written == *ring.snapshot(),
        "ring.json holds the ring in use (version {} vs {})",
        written.version,
        ring.version()
    );

    local.post("authority/stop", None).await?;
    local.post("proxies/0/restart", None).await?;
    let restarted = Instant::now();
    let proxy = wait_for("the restarted proxy to be ready", ROUTE_WITHIN, || async {
        let state = local.state().await?;
        let p = &state["proxies"][0];
        Ok((p["process"] == "running" && p["ready"] == true).then(|| p.clone()))
    })
    .await?;
    anyhow::ensure!(
        proxy["streamConnected"] == false,
        "the authority is down, so the proxy cannot have its ring from the stream"
    );
    let url = proxy["url"].as_str().unwrap_or_default().to_string();
    let fleet = Fleet::connect("cold", CLIENTS, &[url]);
    let on_owners = fleet.wait_on_owners(&ring, ROUTE_WITHIN).await?;
    println!(
        "fallback ring: {CLIENTS} clients of a proxy restarted with the authority down on their \
         owners {:?} after the restart ({on_owners:?} after connecting)",
        restarted.elapsed()
    );

    let admin = proxy["adminUrl"].as_str().unwrap_or_default();
    let metrics =
        wscluster_tests::http::request(hyper::Method::GET, &format!("{admin}/metrics"), None)
            .await?
            .text();
    anyhow::ensure!(
        metrics.contains("wscluster_proxy_ring_source{source=\"file\"} 1"),
        "the proxy reports its fallback ring's source: {metrics}"
    );
    let ready = get_json(&format!("{admin}/readyz")).await?;
    anyhow::ensure!(ready["ringVersion"] == ring.version(), "{ready}");

    // The stream is authoritative again once it returns: same version, source "stream".
    local.post("authority/start", None).await?;
    wait_for(
        "the proxy to follow the stream again",
        ROUTE_WITHIN,
        || async {
            let text = wscluster_tests::http::request(
                hyper::Method::GET,
                &format!("{admin}/metrics"),
                None,
            )
            .await?
            .text();
            Ok(text
                .contains("wscluster_proxy_ring_source{source=\"stream\"} 1")
                .then_some(()))
        },
    )
    .await?;
    fleet.close();
    local.stop().await
}
