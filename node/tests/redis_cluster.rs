//! The node on a real Redis Cluster (three masters, three replicas on loopback, started by the
//! test: `cluster_harness`): users whose keys live on each of the three masters get their
//! messages live and replayed after a reconnect, presence works, and every user's keys sit in
//! one slot (the node's key layout, `mailbox/keys.rs`). Then a master is killed with SIGKILL
//! under a bounded send load: sends during the failover fail with 503 or succeed, every send
//! acknowledged after the failover settled is stored, in order, in its epoch, and the promoted
//! replica's users are in a new epoch, so no offset the old master handed out comes again.
//!
//! Run with `--nocapture` to see the failover figures (the window, the 503s).

mod cluster_harness;
mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wscluster_node::mailbox::keys;

use cluster_harness::{NODE_TIMEOUT_MS, RedisCluster, on_node};
use common::{Node, STEP, next_json, unique, within};

/// The node's default `--cluster-id`, part of every key.
const CLUSTER_ID: &str = "default/chat";

/// `{prefix}:{cluster}:`, the node's key namespace.
fn namespace(prefix: &str) -> String {
    format!("{prefix}:{CLUSTER_ID}:")
}

/// `per_master` users for each of the three masters: `(user, master port, slot)`.
async fn users_on_every_master(
    cluster: &RedisCluster,
    ns: &str,
    per_master: usize,
) -> Vec<(String, u16, u16)> {
    let seen_by = cluster.ports[0];
    let mut by_master: BTreeMap<u16, Vec<(String, u16, u16)>> = BTreeMap::new();
    for i in 0..1000 {
        let user = format!("user-{i}");
        let slot = cluster.slot_of(&keys::stream(ns, &user), seen_by).await;
        let master = cluster.master_of(slot, seen_by).await.expect("a master");
        let mine = by_master.entry(master).or_default();
        if mine.len() < per_master {
            mine.push((user, master, slot));
        }
        if by_master.len() == 3 && by_master.values().all(|m| m.len() == per_master) {
            return by_master.into_values().flatten().collect();
        }
    }
    panic!("no users found on all three masters: {by_master:?}");
}

/// A node on the cluster, given `seeds`, with its own key prefix.
async fn node_on(seeds: &[u16], prefix: &str, extra: &[&str]) -> Node {
    let seeds = RedisCluster::seeds(seeds);
    let args = [
        &["--redis-cluster", &seeds, "--redis-prefix", prefix][..],
        extra,
    ]
    .concat();
    Node::spawn("n-0", &args).await
}

/// `/connect/<user>` with the user percent-encoded as a path segment.
fn connect_path(user: &str, query: &str) -> String {
    let segment: String = user
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect();
    format!("/connect/{segment}{query}")
}

/// One user's round: a live message, presence while connected and gone after, two messages
/// while away replayed after a reconnect with `since` and `epoch`.
async fn live_presence_and_replay(node: &Node, user: &str) {
    let (mut ws, before) = node.connect(&connect_path(user, "")).await;
    assert!(before.is_empty(), "{user}: {before:?}");
    let (status, body) = node.send(user, "live-1").await;
    assert_eq!(
        (status, body["delivered"].as_bool()),
        (200, Some(true)),
        "{user}: {body}"
    );
    let msg = next_json(&mut ws).await;
    assert_eq!(
        (msg["content"].as_str(), msg["offset"].as_u64()),
        (Some("live-1"), Some(1)),
        "{user}: {msg}"
    );
    let epoch = msg["epoch"].as_str().expect("an epoch").to_owned();
    let path = format!("/users/{}", &connect_path(user, "")["/connect/".len()..]);
    let (status, presence) = node.http("GET", &path, None).await;
    assert_eq!(
        (status, presence["node"].as_str()),
        (200, Some("n-0")),
        "{user}: {presence}"
    );
    ws.close(None).await.expect("close");
    node.poll("presence removed", &path, |status, _| status == 404)
        .await;
    for i in 2..=3u64 {
        let (status, body) = node.send(user, &format!("away-{i}")).await;
        assert_eq!(status, 202, "{user}: {body}");
        assert_eq!(
            (body["offset"].as_u64(), body["epoch"].as_str()),
            (Some(i), Some(&*epoch))
        );
    }
    let query = format!("?since=1&epoch={epoch}");
    let (_, replay, ready) = node.connect_ready(&connect_path(user, &query)).await;
    assert_eq!(ready["recovered"], true, "{user}: {ready}");
    let got: Vec<_> = replay
        .iter()
        .map(|v| (v["content"].clone(), v["offset"].clone()))
        .collect();
    let want: Vec<_> = [("away-2", 2), ("away-3", 3)]
        .iter()
        .map(|(c, o)| (serde_json::json!(c), serde_json::json!(o)))
        .collect();
    assert_eq!(got, want, "{user}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_every_master_get_live_and_replayed_messages_and_presence() {
    within(Duration::from_secs(120), async {
        let cluster = RedisCluster::start(17000).await;
        let prefix = unique("wsc-cluster");
        let ns = namespace(&prefix);
        let node = node_on(&cluster.ports[..2], &prefix, &[]).await;
        let mut users = users_on_every_master(&cluster, &ns, 1).await;
        // Braces in a user do not split its keys over slots.
        for odd in ["}", "a}b{c"] {
            let slot = cluster
                .slot_of(&keys::stream(&ns, odd), cluster.ports[0])
                .await;
            let master = cluster
                .master_of(slot, cluster.ports[0])
                .await
                .expect("a master");
            users.push((odd.to_owned(), master, slot));
        }
        for (user, master, slot) in &users {
            live_presence_and_replay(&node, user).await;
            // Both mailbox keys are on the master of the user's slot (a plain connection to
            // it, which would be answered MOVED for a key of another node's slot).
            let mut exists = redis::cmd("EXISTS");
            exists
                .arg(keys::stream(&ns, user))
                .arg(keys::meta(&ns, user));
            let found: i64 = on_node(*master, &exists)
                .await
                .expect("keys on their master");
            assert_eq!(found, 2, "{user}: slot {slot} on {master}");
        }
        node.stop().await;
    })
    .await;
}

/// What one send was answered.
#[derive(Debug, Clone)]
struct Sent {
    user: String,
    content: String,
    /// When the request was made and answered.
    asked: Instant,
    answered: Instant,
    status: u16,
    /// Epoch and offset, for a 2xx.
    stored: Option<(String, u64)>,
}

/// Most sends per user in the failover test (the load is bounded in count and in time).
const MAX_SENDS_PER_USER: usize = 3000;

/// Sends `user` numbered messages one after another (so its sends are ordered) until `stop`.
async fn send_loop(
    node: Arc<Node>,
    user: String,
    log: Arc<Mutex<Vec<Sent>>>,
    stop: CancellationToken,
) {
    for i in 0..MAX_SENDS_PER_USER {
        let content = format!("{user}#{i}");
        let asked = Instant::now();
        let (status, body) = tokio::select! {
            answer = node.send(&user, &content) => answer,
            () = stop.cancelled() => return,
        };
        let stored = (200..300).contains(&status).then(|| {
            let epoch = body["epoch"].as_str().expect("an epoch").to_owned();
            (epoch, body["offset"].as_u64().expect("an offset"))
        });
        let answered = Instant::now();
        let sent = Sent {
            user: user.clone(),
            content,
            asked,
            answered,
            status,
            stored,
        };
        log.lock().expect("log").push(sent);
    }
}

/// One send loop per user, running until [`Load::finish`].
struct Load {
    log: Arc<Mutex<Vec<Sent>>>,
    stop: CancellationToken,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(node: &Arc<Node>, users: &[(String, u16, u16)]) -> Load {
        let (log, stop) = (Arc::new(Mutex::new(Vec::new())), CancellationToken::new());
        let loops = users
            .iter()
            .map(|(user, ..)| {
                let task = send_loop(
                    Arc::clone(node),
                    user.clone(),
                    Arc::clone(&log),
                    stop.clone(),
                );
                tokio::spawn(task)
            })
            .collect();
        Load { log, stop, loops }
    }

    /// The fewest sends to any one of `who` asked at or after `since` and acknowledged.
    fn fewest_acked_since(&self, since: Instant, who: &[String]) -> usize {
        let log = self.log.lock().expect("log");
        let acked = |user: &String| {
            log.iter()
                .filter(|s| s.stored.is_some() && s.asked >= since && &s.user == user)
                .count()
        };
        who.iter().map(acked).min().unwrap_or(0)
    }

    /// Waits (bounded) until every one of `who` has `count` sends asked since `since`
    /// acknowledged: each user's check needs sends of its own on both sides of the failover,
    /// which a total over all of them does not promise.
    async fn until_each_acked(&self, count: usize, since: Instant, who: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.fewest_acked_since(since, who) < count {
            assert!(
                Instant::now() < deadline,
                "some user has only {} of {count} sends acknowledged",
                self.fewest_acked_since(since, who)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the loops; every send made.
    async fn finish(self) -> Vec<Sent> {
        self.stop.cancel();
        for l in self.loops {
            tokio::time::timeout(STEP, l)
                .await
                .expect("send loop stopped")
                .expect("send loop");
        }
        let log = self.log.lock().expect("log");
        log.clone()
    }
}

/// `user`'s stored stream: offset → content.
async fn stored(
    con: &mut redis::cluster_async::ClusterConnection,
    ns: &str,
    user: &str,
) -> BTreeMap<u64, String> {
    let read = con.xrange_all(keys::stream(ns, user));
    let entries: Vec<(String, HashMap<String, String>)> = tokio::time::timeout(STEP, read)
        .await
        .expect("XRANGE in time")
        .expect("XRANGE");
    let entry = |(id, mut fields): (String, HashMap<String, String>)| {
        let offset = id
            .strip_prefix("0-")
            .and_then(|o| o.parse().ok())
            .expect("0-<offset>");
        (offset, fields.remove("c").unwrap_or_default())
    };
    entries.into_iter().map(entry).collect()
}

/// A cluster connection of the test's own to the live nodes, to read what was stored.
async fn reader(cluster: &RedisCluster, dead: u16) -> redis::cluster_async::ClusterConnection {
    let live = cluster.ports.iter().filter(|p| **p != dead);
    let client = redis::cluster::ClusterClient::new(
        live.map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>(),
    )
    .expect("cluster client");
    tokio::time::timeout(STEP, client.get_async_connection())
        .await
        .expect("cluster connection in time")
        .expect("cluster connection")
}

/// Checks one user's sends: every send acknowledged after `settled` is stored at its offset, in
/// send order, in the user's last epoch, and so is every other send of that epoch. On the killed
/// master (`affected`) the last epoch is a new one, the promoted replica's history
/// (`mailbox/scripts.rs`), so no offset of the old epoch is handed out again; elsewhere it is
/// the only one. Returns how many sends were acknowledged in an earlier epoch (a client resuming
/// from one of them is told `recovered: false`).
fn check_user(
    user: &str,
    mine: &[&Sent],
    kept: &BTreeMap<u64, String>,
    settled: Instant,
    affected: bool,
) -> usize {
    let acked: Vec<(&Sent, &String, u64)> = mine
        .iter()
        .filter_map(|s| s.stored.as_ref().map(|(e, o)| (*s, e, *o)))
        .collect();
    let (Some((_, first_epoch, _)), Some((_, last_epoch, _))) = (acked.first(), acked.last())
    else {
        panic!("{user}: no acknowledged send");
    };
    assert_eq!(
        first_epoch != last_epoch,
        affected,
        "{user}: a new epoch exactly where the master was replaced"
    );
    let mut previous = 0;
    for (s, epoch, offset) in &acked {
        if s.asked >= settled {
            assert_eq!(
                epoch, last_epoch,
                "{user}: one epoch after the failover settled"
            );
        }
        if epoch != last_epoch {
            continue;
        }
        assert_eq!(
            kept.get(offset),
            Some(&s.content),
            "{user}: acknowledged in the last epoch, offset {offset}"
        );
        assert!(*offset > previous, "{user}: offsets follow the send order");
        previous = *offset;
    }
    acked.iter().filter(|(_, e, _)| e != last_epoch).count()
}

/// The instants of the failover.
struct Failover {
    victim: u16,
    promoted: u16,
    killed: Instant,
    settled: Instant,
}

/// Prints the failover's cost: the window, the 503s and the sends left in the closed epoch.
fn report(f: &Failover, sends: &[Sent], affected: &[String], closed: usize) {
    let hit = |s: &&Sent| affected.contains(&s.user);
    let first_ok = sends
        .iter()
        .filter(hit)
        .filter(|s| s.stored.is_some() && s.asked >= f.killed)
        .map(|s| s.answered)
        .min()
        .expect("an affected send succeeded after the kill");
    let in_window: Vec<&Sent> = sends
        .iter()
        .filter(hit)
        .filter(|s| s.asked >= f.killed && s.asked < first_ok)
        .collect();
    let failed = |s: &Sent| s.status == 503;
    println!(
        "failover (cluster-node-timeout {NODE_TIMEOUT_MS} ms, master {} -> {}): \
         settled {:?} after the kill; first acknowledged send to the affected slots {:?} \
         after the kill; 503s: {} of {} sends to affected users in the window, {} to \
         unaffected users; acknowledged in the epoch the promotion closed: {closed} \
         (clients resuming from them are told recovered:false); sends: {}",
        f.victim,
        f.promoted,
        f.settled - f.killed,
        first_ok - f.killed,
        in_window.iter().filter(|s| failed(s)).count(),
        in_window.len(),
        sends
            .iter()
            .filter(|s| !affected.contains(&s.user) && failed(s))
            .count(),
        sends.len(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_loses_no_send_acknowledged_after_it_settled() {
    within(Duration::from_secs(180), async {
        let mut cluster = RedisCluster::start(17100).await;
        let prefix = unique("wsc-failover");
        let ns = namespace(&prefix);
        let masters: Vec<u16> = cluster.ports[..3].to_vec();
        let node = Arc::new(node_on(&masters, &prefix, &["--mailbox-max-len", "100000"]).await);
        let users = users_on_every_master(&cluster, &ns, 6).await;
        let (victim, victim_slot) = (users[0].1, users[0].2);
        let affected: Vec<String> = users
            .iter()
            .filter(|u| u.1 == victim)
            .map(|u| u.0.clone())
            .collect();

        let load = Load::start(&node, &users);
        load.until_each_acked(7, Instant::now(), &affected).await;
        cluster.kill(victim);
        let killed = Instant::now();
        let promoted = cluster.wait_failover(victim_slot, victim).await;
        let failover = Failover {
            victim,
            promoted,
            killed,
            settled: Instant::now(),
        };
        load.until_each_acked(34, failover.settled, &affected).await;
        let sends = load.finish().await;

        let unexpected: Vec<&Sent> = sends
            .iter()
            .filter(|s| !matches!(s.status, 200 | 202 | 503))
            .collect();
        assert!(
            unexpected.is_empty(),
            "sends answered neither 2xx nor 503: {unexpected:?}"
        );
        let mut con = reader(&cluster, victim).await;
        let mut closed = 0;
        for (user, ..) in &users {
            let mine: Vec<&Sent> = sends.iter().filter(|s| &s.user == user).collect();
            let kept = stored(&mut con, &ns, user).await;
            closed += check_user(
                user,
                &mine,
                &kept,
                failover.settled,
                affected.contains(user),
            );
        }
        report(&failover, &sends, &affected, closed);
        drop(con);
        if let Ok(node) = Arc::try_unwrap(node) {
            node.stop().await;
        }
    })
    .await;
}

/// Sends to the stalled master's users in the stall test: one every [`STALL_PACE`], so each
/// finds a call slot free and holds it, as a steady load does.
const STALLED_SENDS: usize = 30;
/// The pace of those sends.
const STALL_PACE: Duration = Duration::from_millis(20);
/// Longest a send to a healthy master may take while another master is stalled: a normal send
/// takes milliseconds, the append bound is 1 s.
const NOT_HELD_BACK: Duration = Duration::from_millis(500);

/// Sends to `users` in turn, one every [`STALL_PACE`], without waiting for the answers;
/// tells `started` how many have started, returns every status.
async fn paced_sends(
    node: Arc<Node>,
    users: Vec<String>,
    started: tokio::sync::watch::Sender<usize>,
) -> Vec<u16> {
    let mut pace = tokio::time::interval(STALL_PACE);
    let mut sends = Vec::new();
    for i in 0..STALLED_SENDS {
        pace.tick().await;
        let (node, user) = (Arc::clone(&node), users[i % users.len()].clone());
        sends.push(tokio::spawn(
            async move { node.send(&user, "stalled").await.0 },
        ));
        started.send_modify(|n| *n += 1);
    }
    let mut statuses = Vec::new();
    for send in sends {
        statuses.push(send.await.expect("send task"));
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_stops_answering_does_not_hold_back_the_users_of_the_others() {
    within(Duration::from_secs(120), async {
        let cluster = RedisCluster::start(17200).await;
        let prefix = unique("wsc-stall");
        let ns = namespace(&prefix);
        let node = Arc::new(node_on(&cluster.ports[..3], &prefix, &[]).await);
        let users = users_on_every_master(&cluster, &ns, 4).await;
        for (user, ..) in &users {
            let (status, body) = node.send(user, "before").await;
            assert_eq!(status, 202, "{user}: {body}");
        }
        let stalled = users[0].1;
        let (theirs, others): (Vec<_>, Vec<_>) = users.iter().partition(|u| u.1 == stalled);
        let theirs: Vec<String> = theirs.into_iter().map(|u| u.0.clone()).collect();

        cluster.pause(stalled);
        let (started, mut count) = tokio::sync::watch::channel(0);
        let load = tokio::spawn(paced_sends(Arc::clone(&node), theirs, started));
        // Once more sends to the stalled master are out than the batcher has call slots (4),
        // each would hold one for its whole second.
        count
            .wait_for(|n| *n >= 6)
            .await
            .expect("paced sends running");
        let mut answers = Vec::new();
        for (user, ..) in &others {
            let asked = Instant::now();
            let (status, body) = node.send(user, "through").await;
            answers.push((user.clone(), status, asked.elapsed(), body));
        }
        cluster.resume(stalled);
        let statuses = load.await.expect("stalled sends");

        let slowest = answers.iter().map(|a| a.2).max().expect("answers");
        println!(
            "stalled master: {} sends to the other masters, slowest {slowest:?}; sends to the \
             stalled master answered {:?}",
            answers.len(),
            statuses
        );
        for (user, status, took, body) in &answers {
            assert_eq!(*status, 202, "{user} (healthy master): {body}");
            assert!(
                *took < NOT_HELD_BACK,
                "{user} (healthy master) took {took:?}"
            );
        }
        assert!(
            statuses.iter().all(|s| matches!(s, 200 | 202 | 503)),
            "sends to the stalled master: {statuses:?}"
        );
        drop(cluster);
        if let Ok(node) = Arc::try_unwrap(node) {
            node.stop().await;
        }
    })
    .await;
}

/// Runs the node binary with `args` until it exits (bounded); returns its code and stderr.
async fn failed_start(args: &[&str]) -> (Option<i32>, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_wscluster-node"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(STEP, run)
        .await
        .expect("the node exited in time")
        .expect("the node ran");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr)
}

#[tokio::test]
async fn a_cluster_that_does_not_answer_or_a_bad_seed_fails_the_start_with_the_reason() {
    within(STEP * 2, async {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let seed = format!("redis://:secret@127.0.0.1:{port}");
        let (code, stderr) = failed_start(&["--redis-cluster", &seed]).await;
        assert_eq!(code, Some(1), "{stderr}");
        let reason = format!("error: configuration: redis cluster at redis://***@127.0.0.1:{port}");
        assert!(stderr.contains(&reason), "{stderr}");
        assert!(
            !stderr.contains("secret"),
            "the password is not shown: {stderr}"
        );
        let (code, stderr) = failed_start(&["--redis-cluster", "tcp://127.0.0.1:7000"]).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("is not a redis:// or rediss:// URL"),
            "{stderr}"
        );
    })
    .await;
}
