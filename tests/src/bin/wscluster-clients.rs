//! `wscluster-clients`: more WebSocket clients than one process may hold, in several processes,
//! and the scale-out scenario of `scripts/scale-100k.sh` driven across them. Loopback only;
//! every wait bounded.
//!
//! * `hold` — one client process: connects users `<prefix>-<first>` … through the proxies with
//!   the harness's own [`Fleet`] (reset frames, `since` + `epoch` resumption, de-duplication by
//!   `(epoch, offset)`), then obeys one command a line on stdin and answers one JSON event a
//!   line on stdout:
//!   - on start: `{"event":"connected","clients":N,"ms":…}` once every client is ready;
//!   - `round <seq> <timeout s>`: sends `<user>:<seq>` to each of its users through the
//!     proxies' server API and waits until every one has it: `{"event":"round",…}`;
//!   - `owners <old ring file> <new ring file> <timeout s>`: waits until every client sits on
//!     the owner the new ring names, then compares who was reset with the ring's diff:
//!     `{"event":"owners","predicted":…,"reset":…,"back":[[user, unix ms ready], …]}`;
//!   - `report <rounds>`: the final tallies (lost, repeated, cut sessions, its own VmHWM).
//!
//!   Any failure answers `{"event":"error","error":…}`.
//! * `drive` — the scenario: checks the plan against the open-file limit and the ephemeral
//!   port range, starts local mode with real Redis and RabbitMQ, starts the `hold` processes,
//!   sends a round, scales, waits until every moved client is back, sends another round, and
//!   prints one summary line (and appends the details to `--out`).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use wscluster_ring::{Ring, RingSnapshot};
use wscluster_tests::{Fleet, Local, LocalOptions, Record, ServerApi, reset_users, ring_of};

/// Most clients one `hold` process takes: under the 20,000-file limit with room for its
/// server-API sends and the runtime's own descriptors.
const MAX_CLIENTS_PER_PROCESS: usize = 18_000;
/// Most clients one `drive` run starts.
const MAX_CLIENTS: usize = 200_000;
/// Descriptors a `hold` process needs beside one per client (sends in flight, runtime).
const HOLD_RESERVE_FDS: u64 = 200;
/// Descriptors a proxy needs beside two per client (listeners, ring stream, API calls in flight).
const PROXY_RESERVE_FDS: u64 = 400;
/// Descriptors a node needs beside one per session (Redis, RabbitMQ, listeners, API calls).
const NODE_RESERVE_FDS: u64 = 300;
/// Longest any one step of a `drive` run may take.
const MAX_STEP_SECONDS: u64 = 900;
/// Server-API sends a `hold` process keeps in flight during a round.
const SEND_CONCURRENCY: usize = 64;

#[derive(Debug, Parser)]
#[command(
    about = "WebSocket clients in several processes, and the 100,000-client scale-out scenario"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One client process (commands on stdin, JSON events on stdout).
    Hold(HoldArgs),
    /// The whole scenario across local mode and several `hold` processes.
    Drive(DriveArgs),
}

/// Flags of `hold`.
#[derive(Debug, Clone, clap::Args)]
struct HoldArgs {
    /// A proxy's client base URL (`http://host:port`); repeat for each proxy.
    #[arg(long = "proxy", required = true)]
    proxies: Vec<String>,
    /// A proxy's server API base URL; repeat for each proxy.
    #[arg(long = "api", required = true)]
    apis: Vec<String>,
    /// The run's API keys file (local mode's `apiKeysFile`).
    #[arg(long)]
    api_keys_file: PathBuf,
    /// Users are `<prefix>-<i>`.
    #[arg(long, default_value = "u")]
    prefix: String,
    /// First user index of this process.
    #[arg(long)]
    first: usize,
    /// Users of this process (1 to 18,000).
    #[arg(long)]
    count: usize,
    /// Connections opened per second while connecting.
    #[arg(long, default_value_t = NonZeroU32::new(1_000).expect("non-zero"))]
    connect_rate: NonZeroU32,
    /// Longest connecting every client may take.
    #[arg(long, default_value_t = 300)]
    connect_timeout_seconds: u64,
}

/// Flags of `drive`.
#[derive(Debug, Clone, clap::Args)]
struct DriveArgs {
    /// Clients in all.
    #[arg(long)]
    clients: usize,
    /// Nodes local mode starts with.
    #[arg(long)]
    nodes: u32,
    /// Nodes after the scale-out.
    #[arg(long)]
    scale_to: u32,
    /// Proxy processes.
    #[arg(long)]
    proxies: u32,
    /// Most clients per `hold` process.
    #[arg(long, default_value_t = 16_000)]
    per_process: usize,
    /// Connections opened per second while connecting, over all `hold` processes (each
    /// takes its share): the nodes and proxies share two cores with the clients.
    #[arg(long, default_value_t = NonZeroU32::new(2_000).expect("non-zero"))]
    connect_rate: NonZeroU32,
    /// File the run's details are appended to.
    #[arg(long, default_value = "artifacts/scale-100k.txt")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread per process: several client processes share two cores with the nodes and
    // proxies, and a second worker in each would only add contention.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    match args.command {
        Cmd::Hold(args) => runtime.block_on(hold(args)),
        Cmd::Drive(args) => runtime.block_on(drive(args)),
    }
}

/// Writes one event line on stdout (the `drive` process reads it).
fn emit(event: &Value) {
    println!("{event}");
}

/// Now, in milliseconds since the Unix epoch: the clock every process shares.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `instant` on the shared clock.
fn unix_ms_of(instant: Instant) -> u64 {
    let ago = u64::try_from(instant.elapsed().as_millis()).unwrap_or(u64::MAX);
    unix_ms().saturating_sub(ago)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// hold

async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    let result = hold_inner(&args).await;
    if let Err(e) = &result {
        emit(&json!({"event": "error", "error": format!("{e:#}")}));
    }
    result
}

async fn hold_inner(args: &HoldArgs) -> anyhow::Result<()> {
    check_hold(args)?;
    let keys = wscluster_runtime::credentials::CredentialSet::from_file(&args.api_keys_file)
        .with_context(|| format!("reading {}", args.api_keys_file.display()))?;
    let api = ServerApi {
        urls: args.apis.clone(),
        key: keys.current().to_owned(),
    };
    let started = Instant::now();
    let users = args.first..args.first + args.count;
    let fleet = Fleet::connect_paced_from_own_addresses(
        &args.prefix,
        users,
        &args.proxies,
        args.connect_rate,
    )
    .await;
    fleet
        .wait_connected(Duration::from_secs(args.connect_timeout_seconds))
        .await?;
    emit(&json!({"event": "connected", "clients": args.count, "ms": millis(started.elapsed())}));
    let mut lines = stdin_lines();
    let mut before = Resets::default();
    while let Some(line) = lines.recv().await {
        let event = match HoldCommand::parse(&line) {
            Ok(command) => command.run(&fleet, &api, &mut before).await,
            Err(e) => Err(e),
        };
        emit(&event.unwrap_or_else(|e| json!({"event": "error", "error": format!("{e:#}")})));
    }
    fleet.close();
    Ok(())
}

/// Stdin's lines, read on a thread of their own (the workspace's tokio has no `io-std`); the
/// channel closes at end of input, when the `drive` process closes the pipe or exits.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Refuses a slice that cannot fit this process's open-file limit.
fn check_hold(args: &HoldArgs) -> anyhow::Result<()> {
    if !(1..=MAX_CLIENTS_PER_PROCESS).contains(&args.count) {
        bail!(
            "--count must be 1 to {MAX_CLIENTS_PER_PROCESS}, not {}",
            args.count
        );
    }
    if args.apis.len() != args.proxies.len() {
        bail!("one --api per --proxy");
    }
    let limit = open_file_limit()?;
    let need = args.count as u64 + HOLD_RESERVE_FDS;
    if need > limit {
        bail!(
            "{} clients need {need} descriptors, over this process's open-file limit {limit}",
            args.count
        );
    }
    Ok(())
}

/// A command on a `hold` process's stdin.
#[derive(Debug, PartialEq)]
enum HoldCommand {
    /// Send round `seq` and wait up to the duration for every client to have it.
    Round(usize, Duration),
    /// Wait for every client on the second ring's owner; compare resets with the diff.
    Owners(PathBuf, PathBuf, Duration),
    /// The final tallies after this many rounds.
    Report(usize),
}

impl HoldCommand {
    fn parse(line: &str) -> anyhow::Result<HoldCommand> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let seconds = |s: &str| -> anyhow::Result<Duration> {
            let n: u64 = s.parse().with_context(|| format!("{s:?} is not seconds"))?;
            anyhow::ensure!(n <= MAX_STEP_SECONDS, "{n} s is over {MAX_STEP_SECONDS} s");
            Ok(Duration::from_secs(n))
        };
        let count = |s: &str| {
            s.parse::<usize>()
                .with_context(|| format!("{s:?} is not a count"))
        };
        match words.as_slice() {
            ["round", seq, timeout] => Ok(HoldCommand::Round(count(seq)?, seconds(timeout)?)),
            ["owners", old, new, timeout] => Ok(HoldCommand::Owners(
                PathBuf::from(old),
                PathBuf::from(new),
                seconds(timeout)?,
            )),
            ["report", rounds] => Ok(HoldCommand::Report(count(rounds)?)),
            _ => bail!("unknown command {line:?} (round, owners, report)"),
        }
    }

    /// Runs the command. `before` is what a round last saw of the resets, so `owners` counts
    /// only the resets since (the scale-out's), and tells those of the start-up apart.
    async fn run(
        self,
        fleet: &Fleet,
        api: &ServerApi,
        before: &mut Resets,
    ) -> anyhow::Result<Value> {
        match self {
            HoldCommand::Round(seq, timeout) => {
                let started = Instant::now();
                fleet.send_round(api, seq, SEND_CONCURRENCY).await?;
                let sent = started.elapsed();
                fleet.wait_messages(seq, timeout).await?;
                *before = Resets::of(&fleet.records());
                Ok(json!({"event": "round", "seq": seq, "sendMs": millis(sent),
                    "deliveredMs": millis(started.elapsed()), "resetSoFar": before.0.len()}))
            }
            HoldCommand::Owners(old, new, timeout) => {
                let (old, new) = (read_ring(&old)?, read_ring(&new)?);
                let waited = fleet.wait_on_owners(&new, timeout).await?;
                Ok(moves(fleet, &old, &new, waited, before))
            }
            HoldCommand::Report(rounds) => Ok(report(&fleet.records(), rounds)),
        }
    }
}

/// Reset frames received so far, by user (only users with at least one).
#[derive(Debug, Default)]
struct Resets(BTreeMap<String, usize>);

impl Resets {
    fn of(records: &BTreeMap<String, Record>) -> Resets {
        Resets(
            records
                .iter()
                .filter(|(_, r)| !r.resets.is_empty())
                .map(|(u, r)| (u.clone(), r.resets.len()))
                .collect(),
        )
    }

    /// The users with a reset frame not counted here.
    fn since(&self, records: &BTreeMap<String, Record>) -> BTreeSet<String> {
        records
            .iter()
            .filter(|(u, r)| r.resets.len() > self.0.get(*u).copied().unwrap_or(0))
            .map(|(u, _)| u.clone())
            .collect()
    }
}

fn read_ring(path: &Path) -> anyhow::Result<Ring> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let snapshot = RingSnapshot::from_json(&text)
        .with_context(|| format!("{} is not a ring snapshot", path.display()))?;
    Ok(Ring::build(snapshot)?)
}

/// Who the move reset, against who the ring's diff says moved, and when each reset client's
/// new session became ready (on the shared clock).
fn moves(fleet: &Fleet, old: &Ring, new: &Ring, waited: Duration, before: &Resets) -> Value {
    let records = fleet.records();
    let diff = old.diff(new);
    let predicted = fleet.users(|user| diff.moved(user));
    let reset = before.since(&records);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for u in reset.difference(&predicted) {
        for frame in records.get(u).map_or(&[][..], |r| &r.resets[..]) {
            let key = format!("{} v{:?}", frame.reason.as_str(), frame.ring_version);
            *reasons.entry(key).or_default() += 1;
        }
    }
    let back: Vec<Value> = reset
        .iter()
        .filter_map(|u| Some(json!([u, unix_ms_of(records.get(u)?.ready_at?)])))
        .collect();
    json!({
        "event": "owners",
        "waitedMs": millis(waited),
        "predicted": predicted.len(),
        "reset": reset.len(),
        "resetNotPredicted": reset.difference(&predicted).count(),
        "predictedNotReset": predicted.difference(&reset).count(),
        "unpredictedReasons": reasons,
        "resetBefore": before.0.len(),
        "everReset": reset_users(&records).len(),
        "back": back,
    })
}

/// The tallies of every client after `rounds` rounds: a message is lost when its `<user>:<seq>`
/// never arrived, repeated when it arrived more than once after de-duplication by offset.
fn report(records: &BTreeMap<String, Record>, rounds: usize) -> Value {
    let (mut lost, mut repeated) = (0usize, 0usize);
    for (user, r) in records {
        let mut seen = BTreeSet::new();
        for m in &r.messages {
            if !seen.insert(m.as_str()) {
                repeated += 1;
            }
        }
        lost += (1..=rounds)
            .filter(|s| !seen.contains(format!("{user}:{s}").as_str()))
            .count();
    }
    let sum = |f: fn(&Record) -> u64| records.values().map(f).sum::<u64>();
    json!({
        "event": "report",
        "clients": records.len(),
        "expected": records.len() * rounds,
        "lost": lost,
        "repeated": repeated,
        "duplicatesDropped": sum(|r| r.duplicates),
        "misdelivered": sum(|r| r.misdelivered),
        "unreadable": sum(|r| r.unreadable),
        "cutSessions": sum(|r| r.drops),
        "failedConnects": sum(|r| r.failed_connects),
        "notRecovered": sum(|r| r.not_recovered),
        "vmHwmKb": vm_hwm_kb(std::process::id()),
    })
}

// ---------------------------------------------------------------------------------------------
// /proc

/// This process's soft open-file limit (`Max open files` in `/proc/self/limits`).
fn open_file_limit() -> anyhow::Result<u64> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .context("no numeric `Max open files` in /proc/self/limits")
}

/// Ports an outgoing connection may take (`ip_local_port_range`): the most connections from one
/// source address to one destination.
fn ephemeral_ports() -> anyhow::Result<u64> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let bounds: Vec<u64> = text
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    match bounds.as_slice() {
        [low, high] if high >= low => Ok(high - low + 1),
        _ => bail!("{path} is not `low high`: {text:?}"),
    }
}

/// Peak resident memory of `pid` in KiB (`VmHWM` in its status), if it still runs.
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The children of `parent` with the value of their `--id` flag (local mode's nodes and
/// proxies), from `/proc/*/stat` and `/proc/*/cmdline`.
fn children_by_id(parent: u32) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children: Vec<(String, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .filter_map(|pid| Some((id_flag(pid)?, pid)))
        .collect();
    children.sort();
    children
}

/// The parent pid of `pid`: the second field after the command name in `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The value after `--id` on `pid`'s command line.
fn id_flag(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let at = args.iter().position(|a| *a == b"--id")?;
    Some(String::from_utf8_lossy(args.get(at + 1)?).into_owned())
}

/// The 1-minute load average, for the report (the machine is shared).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

// ---------------------------------------------------------------------------------------------
// drive: the plan

/// What a run asks of each process, and the limits it must fit.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plan {
    /// Clients in all.
    clients: usize,
    /// Nodes before and after the scale-out.
    nodes: (u32, u32),
    /// Proxy processes.
    proxies: u32,
    /// Most clients per `hold` process.
    per_process: usize,
    /// Soft open-file limit every process inherits.
    fd_limit: u64,
    /// Ephemeral ports per (source address, destination).
    ports: u64,
}

impl Plan {
    /// The `hold` processes: (first user, count) each, as even as can be.
    fn slices(&self) -> Vec<(usize, usize)> {
        let processes = self.clients.div_ceil(self.per_process.max(1));
        let base = self.clients / processes.max(1);
        let extra = self.clients % processes.max(1);
        let mut first = 0;
        (0..processes)
            .map(|i| {
                let count = base + usize::from(i < extra);
                first += count;
                (first - count, count)
            })
            .collect()
    }

    /// Refuses a plan that cannot fit, naming the limit it breaks. Nodes are checked again
    /// against the real ring once local mode runs ([`Plan::check_nodes`]).
    fn check(&self) -> anyhow::Result<()> {
        let (from, to) = self.nodes;
        anyhow::ensure!(
            (1..=MAX_CLIENTS).contains(&self.clients),
            "--clients must be 1 to {MAX_CLIENTS}"
        );
        anyhow::ensure!(
            from >= 1 && to > from && to <= 16,
            "need 1 <= --nodes < --scale-to <= 16"
        );
        anyhow::ensure!(
            (1..=16).contains(&self.proxies),
            "--proxies must be 1 to 16"
        );
        let per_process = self.slices().iter().map(|s| s.1).max().unwrap_or(0);
        let hold = per_process as u64 + HOLD_RESERVE_FDS;
        anyhow::ensure!(
            per_process <= MAX_CLIENTS_PER_PROCESS && hold <= self.fd_limit,
            "a client process would hold {per_process} clients ({hold} descriptors): over the open-file limit {} (or {MAX_CLIENTS_PER_PROCESS}); lower --per-process",
            self.fd_limit
        );
        let per_proxy = self.clients.div_ceil(self.proxies as usize) as u64;
        let proxy = 2 * per_proxy + PROXY_RESERVE_FDS;
        let fitting = (self.fd_limit.saturating_sub(PROXY_RESERVE_FDS) / 2).max(1);
        anyhow::ensure!(
            proxy <= self.fd_limit,
            "{} clients over {} proxies is {per_proxy} per proxy: 2 descriptors each (client and upstream) + {PROXY_RESERVE_FDS} = {proxy}, over the open-file limit {}; use at least {} proxies",
            self.clients,
            self.proxies,
            self.fd_limit,
            (self.clients as u64).div_ceil(fitting)
        );
        anyhow::ensure!(
            per_proxy <= self.ports,
            "{per_proxy} clients per proxy exceed the {} ephemeral ports from 127.0.0.1 to one proxy",
            self.ports
        );
        self.check_average_node()
    }

    /// The average node before the scale-out must fit; the ring decides the largest.
    fn check_average_node(&self) -> anyhow::Result<()> {
        let average = self.clients.div_ceil(self.nodes.0 as usize) as u64;
        let need = average + NODE_RESERVE_FDS;
        anyhow::ensure!(
            need <= self.fd_limit,
            "{} clients over {} nodes is {average} sessions per node, + {NODE_RESERVE_FDS} = {need} descriptors: over the open-file limit {}; start with more nodes",
            self.clients,
            self.nodes.0,
            self.fd_limit
        );
        Ok(())
    }

    /// Every node of `ring` must hold its users' sessions within the open-file limit, and all
    /// proxies reach it from the one source address 127.0.0.1, so within the port range too.
    fn check_nodes(&self, ring: &Ring, prefix: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut load: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..self.clients {
            *load
                .entry(ring.owner(format!("{prefix}-{i}"))?.id.clone())
                .or_default() += 1;
        }
        for (node, sessions) in &load {
            let need = sessions + NODE_RESERVE_FDS;
            anyhow::ensure!(
                need <= self.fd_limit && *sessions <= self.ports,
                "the ring gives {node} {sessions} sessions: {need} descriptors (open-file limit {}), {} ports from 127.0.0.1; start with more nodes or fewer clients",
                self.fd_limit,
                self.ports
            );
        }
        Ok(load)
    }
}

// ---------------------------------------------------------------------------------------------
// drive: the processes

/// One running `hold` process.
struct Hold {
    /// Its slice, for messages.
    name: String,
    /// Its client count.
    clients: u64,
    child: Child,
    stdin: ChildStdin,
    events: Lines<BufReader<ChildStdout>>,
}

impl Hold {
    fn spawn(slice: (usize, usize), ctx: &HoldContext) -> anyhow::Result<Hold> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut command = Command::new(exe);
        command
            .arg("hold")
            .args([
                "--first",
                &slice.0.to_string(),
                "--count",
                &slice.1.to_string(),
            ])
            .args(["--prefix", USER_PREFIX])
            .args(["--connect-rate", &ctx.connect_rate.to_string()])
            .arg("--api-keys-file")
            .arg(&ctx.api_keys_file);
        for (proxy, api) in ctx.proxies.iter().zip(&ctx.apis) {
            command.args(["--proxy", proxy, "--api", api]);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().context("starting a hold process")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(Hold {
            name: format!("clients {}..{}", slice.0, slice.0 + slice.1),
            clients: slice.1 as u64,
            child,
            stdin,
            events: BufReader::new(stdout).lines(),
        })
    }

    /// Sends `command` (if any), then answers the next `event` event within `timeout`.
    async fn ask(
        &mut self,
        command: Option<&str>,
        event: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        if let Some(command) = command {
            self.stdin
                .write_all(format!("{command}\n").as_bytes())
                .await?;
            self.stdin.flush().await?;
        }
        let name = self.name.clone();
        tokio::time::timeout(timeout, self.next(event))
            .await
            .with_context(|| format!("{name}: no {event} event within {timeout:?}"))?
            .context(name)
    }

    async fn next(&mut self, event: &str) -> anyhow::Result<Value> {
        loop {
            let Some(line) = self.events.next_line().await? else {
                bail!("exited before its {event} event");
            };
            let value: Value = serde_json::from_str(&line)
                .with_context(|| format!("not a JSON event: {line:?}"))?;
            match value["event"].as_str() {
                Some(e) if e == event => return Ok(value),
                Some("error") => bail!("{}", value["error"]),
                _ => {}
            }
        }
    }
}

/// What every `hold` process is started with.
struct HoldContext {
    proxies: Vec<String>,
    apis: Vec<String>,
    api_keys_file: PathBuf,
    connect_rate: NonZeroU32,
}

/// Users are `u-<i>`.
const USER_PREFIX: &str = "u";

/// Asks every process the same thing at once; answers their events in process order.
async fn ask_all(
    holds: &mut [Hold],
    command: Option<&str>,
    event: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<Value>> {
    futures_util::future::try_join_all(holds.iter_mut().map(|h| h.ask(command, event, timeout)))
        .await
}

// ---------------------------------------------------------------------------------------------
// drive: the scenario

async fn drive(args: DriveArgs) -> anyhow::Result<()> {
    let plan = Plan {
        clients: args.clients,
        nodes: (args.nodes, args.scale_to),
        proxies: args.proxies,
        per_process: args.per_process,
        fd_limit: open_file_limit()?,
        ports: ephemeral_ports()?,
    };
    plan.check()?;
    let mut options = LocalOptions::real_backends("scale-100k", args.nodes, args.proxies);
    options.proxy_source_addresses = true;
    let settle = Duration::from_secs(60 + 15 * u64::from(args.nodes + args.proxies));
    let local = Local::start_within(options, settle).await?;
    // SIGTERM or Ctrl-C (the script's trap) still stops local mode and deletes its Redis keys;
    // the client processes are killed when their handles drop.
    let result = tokio::select! {
        result = scenario(&local, &args, &plan) => result,
        signal = interrupted() => Err(signal.map_or_else(Into::into, |s| anyhow::anyhow!("stopped by {s}"))),
    };
    let stopped = local.stop().await;
    let figures = result?;
    stopped?;
    figures.finish(&args.out)
}

/// Waits for SIGTERM or SIGINT; answers which.
async fn interrupted() -> Result<&'static str, std::io::Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
    }
}

/// Everything a run measured.
#[derive(Default)]
struct Figures {
    lines: Vec<String>,
    summary: String,
    failures: Vec<String>,
}

impl Figures {
    fn note(&mut self, line: String) {
        eprintln!("{line}");
        self.lines.push(line);
    }

    /// Prints the summary line, appends everything to `out`, fails on a broken promise.
    fn finish(self, out: &Path) -> anyhow::Result<()> {
        println!("{}", self.summary);
        let mut text = self.lines.join("\n");
        text.push_str(&format!("\n{}\n\n", self.summary));
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        anyhow::ensure!(self.failures.is_empty(), "{}", self.failures.join("; "));
        Ok(())
    }
}

async fn scenario(local: &Local, args: &DriveArgs, plan: &Plan) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    let load_at_start = load_average();
    let ring = local.ring().await?;
    let load = plan.check_nodes(&ring, USER_PREFIX)?;
    figures.note(format!(
        "plan {plan:?}; sessions per node on ring v{}: {load:?}",
        ring.version()
    ));
    let slices = plan.slices();
    let ctx = hold_context(local, args, slices.len()).await?;
    let mut holds = slices
        .into_iter()
        .map(|s| Hold::spawn(s, &ctx))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let step = Duration::from_secs(MAX_STEP_SECONDS);
    let started = Instant::now();
    let connected = ask_all(&mut holds, None, "connected", step).await?;
    let connect_ms = millis(started.elapsed());
    figures.note(format!(
        "all {} clients connected after {connect_ms} ms: {connected:?}",
        plan.clients
    ));
    let round1 = round(&mut holds, 1).await?;
    let moved = scale_out(local, args, &mut holds, &mut figures).await?;
    let round2 = round(&mut holds, 2).await?;
    let rss = peak_rss(local, &holds);
    let reports = ask_all(&mut holds, Some("report 2"), "report", step).await?;
    for mut h in holds {
        drop(h.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(30), h.child.wait()).await;
    }
    let totals = Totals::of(&reports);
    figures.note(format!(
        "round 1 delivered in {round1} ms, round 2 in {round2} ms; reports {reports:?}"
    ));
    figures.note(format!("peak RSS (VmHWM, KiB): {rss:?}"));
    figures.summary = summary(plan, &moved, &totals, connect_ms, &rss, &load_at_start);
    figures.failures = failures(&moved, &totals);
    Ok(figures)
}

/// The proxies' URLs and the run's API keys file, from `/api/state`.
async fn hold_context(
    local: &Local,
    args: &DriveArgs,
    processes: usize,
) -> anyhow::Result<HoldContext> {
    let share = args.connect_rate.get() / u32::try_from(processes.max(1)).unwrap_or(u32::MAX);
    let api = local.server_api().await?;
    let state = local.state().await?;
    let keys = state["apiKeysFile"]
        .as_str()
        .context("no apiKeysFile in /api/state")?;
    Ok(HoldContext {
        proxies: local.proxy_urls().await?,
        apis: api.urls,
        api_keys_file: PathBuf::from(keys),
        connect_rate: NonZeroU32::new(share).unwrap_or(NonZeroU32::MIN),
    })
}

/// Sends round `seq` through every process; answers how long the slowest took to deliver it.
async fn round(holds: &mut [Hold], seq: usize) -> anyhow::Result<u64> {
    // At least 50 sends a second per process on a loaded machine, and a minute to spare.
    let timeout =
        (60 + holds.iter().map(|h| h.clients).max().unwrap_or(0) / 50).min(MAX_STEP_SECONDS);
    let command = format!("round {seq} {timeout}");
    let events = ask_all(
        holds,
        Some(&command),
        "round",
        Duration::from_secs(timeout + 10),
    )
    .await?;
    Ok(events
        .iter()
        .filter_map(|e| e["deliveredMs"].as_u64())
        .max()
        .unwrap_or(0))
}

/// What the scale-out did.
#[derive(Debug, Default)]
struct Moved {
    predicted: u64,
    reset: u64,
    reset_not_predicted: u64,
    predicted_not_reset: u64,
    /// Clients reset before the scale request (during start-up), not counted above.
    reset_before: u64,
    /// From the scale request to the last moved client's new session, ms.
    last_back_ms: u64,
    /// Median of the same over the moved clients, ms.
    median_back_ms: u64,
    /// Ring publish → every proxy applied, from local mode's propagation record.
    propagation_ms: Option<f64>,
    /// The diff's moved slot fraction.
    slot_fraction: Option<f64>,
}

async fn scale_out(
    local: &Local,
    args: &DriveArgs,
    holds: &mut [Hold],
    figures: &mut Figures,
) -> anyhow::Result<Moved> {
    let old = local.ring().await?;
    let scale_at = unix_ms();
    local.scale(args.scale_to).await?;
    let settled = local
        .wait_settled(args.scale_to as usize, Duration::from_secs(180))
        .await?;
    let new = ring_of(&settled)?;
    anyhow::ensure!(
        new.version() > old.version(),
        "the scale-out published no new ring"
    );
    let dir = local
        .log_dir
        .clone()
        .context("local mode has no log directory")?;
    let (old_file, new_file) = (dir.join("ring-old.json"), dir.join("ring-new.json"));
    std::fs::write(&old_file, old.snapshot().to_json())?;
    std::fs::write(&new_file, new.snapshot().to_json())?;
    let timeout = 300;
    let command = format!(
        "owners {} {} {timeout}",
        old_file.display(),
        new_file.display()
    );
    let events = ask_all(
        holds,
        Some(&command),
        "owners",
        Duration::from_secs(timeout + 10),
    )
    .await?;
    let mut moved = Moved::of(&events, scale_at);
    moved.propagation_ms = propagation_ms(&local.state().await?, new.version());
    moved.slot_fraction = old.diff(&new).moved_slot_fraction();
    figures.note(format!(
        "scale {}→{}: ring v{}→v{}, {moved:?}; per-process {:?}",
        args.nodes,
        args.scale_to,
        old.version(),
        new.version(),
        events.iter().map(|e| json!({"predicted": e["predicted"], "reset": e["reset"], "resetBefore": e["resetBefore"], "unpredictedReasons": e["unpredictedReasons"], "waitedMs": e["waitedMs"]})).collect::<Vec<_>>()
    ));
    Ok(moved)
}

impl Moved {
    fn of(events: &[Value], scale_at: u64) -> Moved {
        let sum = |k: &str| events.iter().filter_map(|e| e[k].as_u64()).sum::<u64>();
        let mut back: Vec<u64> = events
            .iter()
            .filter_map(|e| e["back"].as_array())
            .flatten()
            .filter_map(|pair| pair.get(1)?.as_u64())
            .map(|t| t.saturating_sub(scale_at))
            .collect();
        back.sort_unstable();
        Moved {
            predicted: sum("predicted"),
            reset: sum("reset"),
            reset_not_predicted: sum("resetNotPredicted"),
            predicted_not_reset: sum("predictedNotReset"),
            reset_before: sum("resetBefore"),
            last_back_ms: back.last().copied().unwrap_or(0),
            median_back_ms: back.get(back.len() / 2).copied().unwrap_or(0),
            ..Moved::default()
        }
    }
}

/// How long `version` took to reach every proxy, from `/api/state`'s `propagation`.
fn propagation_ms(state: &Value, version: u64) -> Option<f64> {
    state["propagation"]
        .as_array()?
        .iter()
        .find(|v| v["version"].as_u64() == Some(version))?["allProxiesAppliedMs"]
        .as_f64()
}

/// Peak RSS (KiB) of local mode, each of its nodes and proxies, and each client process.
fn peak_rss(local: &Local, holds: &[Hold]) -> Vec<(String, Option<u64>)> {
    let mut rss = Vec::new();
    if let Some(pid) = local.pid() {
        rss.push(("operator".to_owned(), vm_hwm_kb(pid)));
        for (id, child) in children_by_id(pid) {
            rss.push((id, vm_hwm_kb(child)));
        }
    }
    for h in holds {
        rss.push((h.name.clone(), h.child.id().and_then(vm_hwm_kb)));
    }
    rss.push(("driver".to_owned(), vm_hwm_kb(std::process::id())));
    rss
}

/// The client processes' reports added up.
#[derive(Debug, Default)]
struct Totals {
    expected: u64,
    lost: u64,
    repeated: u64,
    duplicates_dropped: u64,
    misdelivered: u64,
    unreadable: u64,
    cut: u64,
    failed_connects: u64,
    not_recovered: u64,
}

impl Totals {
    fn of(reports: &[Value]) -> Totals {
        let sum = |k: &str| reports.iter().filter_map(|e| e[k].as_u64()).sum::<u64>();
        Totals {
            expected: sum("expected"),
            lost: sum("lost"),
            repeated: sum("repeated"),
            duplicates_dropped: sum("duplicatesDropped"),
            misdelivered: sum("misdelivered"),
            unreadable: sum("unreadable"),
            cut: sum("cutSessions"),
            failed_connects: sum("failedConnects"),
            not_recovered: sum("notRecovered"),
        }
    }
}

/// The run's one line of figures.
fn summary(
    plan: &Plan,
    moved: &Moved,
    totals: &Totals,
    connect_ms: u64,
    rss: &[(String, Option<u64>)],
    load_at_start: &str,
) -> String {
    let fraction = |n: u64| n as f64 / plan.clients as f64 * 100.0;
    let mb = |kind: &str| {
        let of_kind: Vec<u64> = rss
            .iter()
            .filter(|(n, _)| n.contains(kind))
            .filter_map(|(_, k)| *k)
            .collect();
        format!(
            "{} MiB max of {}",
            of_kind.iter().max().unwrap_or(&0) / 1024,
            of_kind.len()
        )
    };
    format!(
        "clients {}, nodes {}->{}, proxies {}, client processes {}, fd limit {}: connected in {connect_ms} ms; predicted moved {} ({:.2} %), reset {} ({:.2} %), reset-not-predicted {}, predicted-not-reset {} (reset before the scale, at start-up: {}); moved back median {} ms, last {} ms after the scale request; messages {} sent, lost {}, repeated {}, dropped as duplicate offsets {}, cut sessions {}, refused connects {}, not recovered {}; ring publish -> all proxies applied {:?} ms; peak RSS: operator {}, nodes {}, proxies {}, client processes {}; load average {} at start, {} at end",
        plan.clients,
        plan.nodes.0,
        plan.nodes.1,
        plan.proxies,
        plan.slices().len(),
        plan.fd_limit,
        moved.predicted,
        fraction(moved.predicted),
        moved.reset,
        fraction(moved.reset),
        moved.reset_not_predicted,
        moved.predicted_not_reset,
        moved.reset_before,
        moved.median_back_ms,
        moved.last_back_ms,
        totals.expected,
        totals.lost,
        totals.repeated,
        totals.duplicates_dropped,
        totals.cut,
        totals.failed_connects,
        totals.not_recovered,
        moved.propagation_ms,
        mb("operator"),
        mb("-node-"),
        mb("-proxy-"),
        mb("clients"),
        load_at_start,
        load_average(),
    )
}

/// The promises a run must keep: nothing lost or misdelivered, exactly the predicted clients
/// reset.
fn failures(moved: &Moved, totals: &Totals) -> Vec<String> {
    let mut failures = Vec::new();
    if totals.lost > 0 {
        failures.push(format!("{} messages lost", totals.lost));
    }
    if totals.misdelivered + totals.unreadable > 0 {
        failures.push(format!(
            "{} misdelivered, {} unreadable frames",
            totals.misdelivered, totals.unreadable
        ));
    }
    if moved.reset_not_predicted + moved.predicted_not_reset > 0 {
        failures.push(format!(
            "resets differ from the ring's prediction: {} reset but not predicted, {} predicted but not reset",
            moved.reset_not_predicted, moved.predicted_not_reset
        ));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use wscluster_ring::Member;

    fn plan(clients: usize, nodes: u32, proxies: u32) -> Plan {
        Plan {
            clients,
            nodes: (nodes, nodes + 1),
            proxies,
            per_process: 16_000,
            fd_limit: 20_000,
            ports: 28_232,
        }
    }

    #[test]
    fn a_plan_over_the_open_file_limit_is_refused_naming_it() {
        let two_proxies = plan(100_000, 6, 2)
            .check()
            .expect_err("2 proxies cannot hold 100k");
        assert!(
            two_proxies.to_string().contains("use at least 11 proxies"),
            "{two_proxies}"
        );
        let four_nodes = plan(100_000, 4, 12)
            .check()
            .expect_err("4 nodes cannot hold 100k");
        assert!(
            four_nodes.to_string().contains("open-file limit 20000"),
            "{four_nodes}"
        );
        assert!(plan(100_000, 6, 12).check().is_ok());
        assert!(plan(76_000, 4, 9).check().is_ok());
    }

    #[test]
    fn slices_cover_every_user_once_within_the_per_process_bound() {
        let slices = plan(100_000, 6, 12).slices();
        assert_eq!(slices.len(), 7);
        assert_eq!(slices.iter().map(|s| s.1).sum::<usize>(), 100_000);
        assert!(slices.iter().all(|s| s.1 <= 16_000));
        assert!(slices.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
    }

    #[test]
    fn the_ring_decides_whether_each_node_fits() {
        let members = (0..2).map(|i| Member::active(format!("n{i}"), format!("127.0.0.1:{i}")));
        let ring = Ring::build(RingSnapshot::new("t/t", 1, members.collect())).expect("ring");
        let load = plan(30_000, 2, 4)
            .check_nodes(&ring, "u")
            .expect("15k each fits");
        assert_eq!(load.values().sum::<u64>(), 30_000);
        assert!(
            plan(45_000, 2, 6).check_nodes(&ring, "u").is_err(),
            "22.5k each does not"
        );
    }

    #[test]
    fn hold_commands_parse_and_bad_ones_are_refused() {
        assert_eq!(
            HoldCommand::parse("round 2 60").expect("round"),
            HoldCommand::Round(2, Duration::from_secs(60))
        );
        assert_eq!(
            HoldCommand::parse("report 2").expect("report"),
            HoldCommand::Report(2)
        );
        assert!(matches!(
            HoldCommand::parse("owners a b 10"),
            Ok(HoldCommand::Owners(..))
        ));
        for bad in ["", "round x 1", "round 1 100000", "report", "quit"] {
            assert!(HoldCommand::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_message_missing_or_repeated_is_counted() {
        let mut records = BTreeMap::new();
        let record = |m: &[&str]| Record {
            messages: m.iter().map(|s| (*s).to_owned()).collect(),
            ..Record::default()
        };
        records.insert("a".to_owned(), record(&["a:1", "a:2"]));
        records.insert("b".to_owned(), record(&["b:1", "b:1"]));
        let r = report(&records, 2);
        assert_eq!(
            (
                r["expected"].as_u64(),
                r["lost"].as_u64(),
                r["repeated"].as_u64()
            ),
            (Some(4), Some(1), Some(1))
        );
    }
}
