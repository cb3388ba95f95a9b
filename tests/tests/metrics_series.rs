//! Every series the chart's Grafana dashboard and alert rules query is one the real binaries
//! export (issue 16 §7). The dashboard and the rules are read from the very files the chart
//! templates in (`charts/wscluster/files/`), so a renamed or misspelt metric fails here.
//!
//! What runs, all on 127.0.0.1, every process killed on drop:
//! - `wscluster-operator local` (two nodes, one proxy, in-memory backends): a WebSocket client
//!   connects through the proxy and gets a message sent through the proxy's server API, a
//!   scale-down to one node drains it (a proxy reset), an upgrade without a key is refused;
//! - `wscluster-operator node` on its own, with real Redis and RabbitMQ (local mode does not
//!   publish its nodes' admin addresses): a client connects to it directly and gets a message
//!   sent through its server API, a second session of the same user replaces it, an upgrade
//!   without a key is refused;
//! - `wscluster-operator run` against a stand-in for the Kubernetes API served by this test
//!   (it lists two WsClusters, holds watches open and echoes writes): one cluster reconciles,
//!   which gives the per-cluster series, the other names a missing Secret, which counts a
//!   reconcile error.
//!
//! prometheus-client leaves a labelled family out of the exposition until it has a child, so
//! this traffic is what makes the labelled series appear.
//! A name counts as exported when a scrape declares it (`# TYPE`), with the sample suffixes
//! OpenMetrics adds: `_total` for counters, `_bucket`/`_sum`/`_count` for histograms. The names
//! come from a small PromQL reader ([`metric_names`]), tested on its own below.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::task::AbortOnDropHandle;
use wscluster_ring::contract::api::Route;
use wscluster_runtime::announce::Announcement;
use wscluster_tests::env::{amqp_url, redis_url, workspace_root};
use wscluster_tests::http;
use wscluster_tests::{
    Local, LocalOptions, TempDir, operator_binary, run_bounded, send_once, unique, wait_for,
};

/// The longest the whole test may take: two process start-ups, two sends, three scrapes.
const TEST_TIMEOUT_SECONDS: u64 = 120;
/// The longest a started process may take to print its address.
const ANNOUNCE_TIMEOUT_SECONDS: u64 = 30;
/// The longest the operator may take to reconcile the fake API's clusters.
const OPERATOR_SERIES_TIMEOUT_SECONDS: u64 = 30;
/// The longest a client may wait for the message sent to it.
const MESSAGE_TIMEOUT_SECONDS: u64 = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_dashboard_and_the_alerts_query_is_exported_by_the_binaries() {
    run_bounded(Duration::from_secs(TEST_TIMEOUT_SECONDS), scenario()).await;
}

async fn scenario() -> anyhow::Result<()> {
    let queried = queried_names()?;
    anyhow::ensure!(
        queried.len() >= 20,
        "only {} names read: {queried:?}",
        queried.len()
    );
    let dir = TempDir::new("wscluster-metrics-series")?;
    let mut scrapes = vec![];
    scrapes.push(("operator", operator_scrape(dir.path()).await?));
    scrapes.push(("node", node_scrape(dir.path()).await?));
    scrapes.push(("proxy", proxy_scrape().await?));
    let exported: BTreeSet<String> = scrapes
        .iter()
        .flat_map(|(_, text)| exported_names(text))
        .collect();
    let missing: Vec<&String> = queried.difference(&exported).collect();
    for (what, text) in &scrapes {
        println!("{what}: {} names exported", exported_names(text).len());
    }
    println!(
        "{} names queried, all exported: {}",
        queried.len(),
        missing.is_empty()
    );
    if !missing.is_empty() {
        bail!("queried by the dashboard or the alerts but exported by no binary: {missing:?}");
    }
    Ok(())
}

// --- What the dashboard and the rules query ----------------------------------------------

/// Every metric name the dashboard's panels and variables and the alert rules read.
fn queried_names() -> anyhow::Result<BTreeSet<String>> {
    let files = workspace_root().join("charts/wscluster/files");
    let dashboard = read(&files.join("grafana-dashboard.json"))?;
    let dashboard: Value = serde_json::from_str(&dashboard).context("the dashboard JSON")?;
    let rules = read(&files.join("prometheus-rules.yaml"))?;
    let rules: serde_yaml::Value = serde_yaml::from_str(&rules).context("the rules YAML")?;
    let mut exprs = vec![];
    dashboard_exprs(&dashboard, &mut exprs);
    anyhow::ensure!(
        exprs.len() >= 10,
        "the dashboard has only {} queries",
        exprs.len()
    );
    let rule_exprs = rule_exprs(&rules);
    anyhow::ensure!(
        rule_exprs.len() >= 7,
        "only {} alert rules",
        rule_exprs.len()
    );
    exprs.extend(rule_exprs);
    Ok(exprs.iter().flat_map(|e| metric_names(e)).collect())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The `expr` of every panel target (at any depth, rows included) and the query of every
/// template variable (`label_values(<selector>, <label>)` gives its selector).
fn dashboard_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    ("templating", t) => variable_queries(t, out),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn variable_queries(templating: &Value, out: &mut Vec<String>) {
    let variables = templating["list"].as_array().into_iter().flatten();
    for variable in variables.filter(|v| v["type"] == "query") {
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap_or_default();
        out.push(label_values_selector(query).unwrap_or(query).to_owned());
    }
}

/// The selector of Grafana's `label_values(<selector>, <label>)`, which is not PromQL.
fn label_values_selector(query: &str) -> Option<&str> {
    let args = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    Some(args.rsplit_once(',').map_or(args, |(selector, _)| selector))
}

/// The `expr` of every rule of every group.
fn rule_exprs(rules: &serde_yaml::Value) -> Vec<String> {
    let groups = rules["groups"].as_sequence().into_iter().flatten();
    groups
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .filter_map(|r| r["expr"].as_str().map(str::to_owned))
        .collect()
}

// --- A small PromQL reader ----------------------------------------------------------------

/// PromQL words that are never metric names: aggregations, set and comparison operators,
/// modifiers, literals.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names an expression reads: identifiers outside strings, label matchers `{…}`
/// and ranges `[…]`, that are neither keywords, nor functions (followed by `(`), nor label
/// lists (`by (…)`), nor Grafana variables (`$name`), nor numbers and durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i = match c {
            '"' | '\'' | '`' => skip_string(&chars, i),
            '{' => skip_until(&chars, i, '}'),
            '[' => skip_until(&chars, i, ']'),
            '$' => skip_word(&chars, i + 1),
            c if c.is_ascii_digit() || c == '.' => skip_word(&chars, i),
            c if is_word_start(c) => {
                let end = skip_word(&chars, i);
                let word: String = chars[i..end].iter().collect();
                let next = next_non_space(&chars, end);
                if LABEL_LIST_KEYWORDS.contains(&word.as_str()) && next == Some('(') {
                    skip_until(&chars, end, ')')
                } else {
                    if !KEYWORDS.contains(&word.as_str()) && next != Some('(') {
                        names.insert(word);
                    }
                    end
                }
            }
            _ => i + 1,
        };
    }
    names
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

/// The index after the word (letters, digits, `_`, `:`, and `.` for numbers) at `i`.
fn skip_word(chars: &[char], mut i: usize) -> usize {
    while i < chars.len()
        && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':' | '.'))
    {
        i += 1;
    }
    i
}

/// The index after the string literal opening at `i` (backslash escapes honoured).
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        j += if chars[j] == '\\' { 2 } else { 1 };
    }
    j + 1
}

/// The index after the first `close` from `i` on, skipping string literals (a `}` inside a
/// label value does not close the matcher).
fn skip_until(chars: &[char], i: usize, close: char) -> usize {
    let mut j = i + 1;
    while j < chars.len() && chars[j] != close {
        j = if matches!(chars[j], '"' | '\'' | '`') {
            skip_string(chars, j)
        } else {
            j + 1
        };
    }
    j + 1
}

fn next_non_space(chars: &[char], i: usize) -> Option<char> {
    chars[i.min(chars.len())..]
        .iter()
        .copied()
        .find(|c| !c.is_whitespace())
}

// --- What the binaries export ---------------------------------------------------------------

/// The sample names a text exposition declares: each `# TYPE` family with the suffixes of its
/// type, plus every sample line's name (for families an exposition leaves untyped).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            if end > 0 {
                names.insert(line[..end].to_owned());
            }
        }
    }
    names
}

/// `GET <base>/metrics`, which must answer 200.
async fn scrape(base: &str) -> anyhow::Result<String> {
    let url = format!("{base}/metrics");
    let response = http::request(Method::GET, &url, None).await?;
    anyhow::ensure!(
        response.status == StatusCode::OK,
        "GET {url} answered {}",
        response.status
    );
    Ok(response.text())
}

// --- The processes ----------------------------------------------------------------------------

/// A started process (killed on drop) and the addresses its first stdout line announced.
struct Announced {
    /// Held so the process lives as long as the test needs it.
    _child: Child,
    /// The main address.
    addr: SocketAddr,
    /// Its `admin=` address, if it announced one.
    admin: Option<SocketAddr>,
}

/// Starts `command` (its stderr to `log`) and reads the announcement line.
async fn spawn_announced(mut command: Command, log: &Path) -> anyhow::Result<Announced> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let limit = Duration::from_secs(ANNOUNCE_TIMEOUT_SECONDS);
    let first = tokio::time::timeout(limit, lines.next_line())
        .await
        .with_context(|| format!("no address within {limit:?}; see {}", log.display()))??
        .with_context(|| format!("exited before announcing; see {}", log.display()))?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let announcement: Announcement = first.trim().parse().context("the announcement line")?;
    Ok(Announced {
        _child: child,
        addr: announcement.addr,
        admin: announcement.get("admin"),
    })
}

/// `wscluster-operator run` against [`serve_fake_api`] (no Lease flags: it leads alone). Its
/// two WsClusters give the per-cluster series (`chat` reconciles, `broken` names a missing
/// Secret and counts a reconcile error); the admin port is scraped once both appear.
async fn operator_scrape(dir: &Path) -> anyhow::Result<String> {
    let (api, _server) = serve_fake_api().await?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, kubeconfig_yaml(api))?;
    let mut command = Command::new(operator_binary()?);
    command
        .args([
            "run",
            "--ring-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--ring-public-url", "http://127.0.0.1:1"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("POD_NAMESPACE")
        .env_remove("POD_NAME")
        .env_remove("KUBERNETES_SERVICE_HOST");
    let log = dir.join("operator.log");
    let operator = spawn_announced(command, &log).await?;
    let admin = operator
        .admin
        .context("the operator announced no admin address")?;
    let base = format!("http://{admin}");
    let what = "the operator's per-cluster series";
    let found = wait_for(
        what,
        Duration::from_secs(OPERATOR_SERIES_TIMEOUT_SECONDS),
        || async {
            let text = scrape(&base).await?;
            let ready = [
                "wscluster_operator_ring_version{",
                "wscluster_operator_reconcile_errors_total{",
            ]
            .iter()
            .all(|series| text.contains(series));
            Ok(ready.then_some(text))
        },
    )
    .await;
    found.with_context(|| format!("the operator's log ends with:\n{}", tail(&log, 30)))
}

/// The last `lines` lines of a log file, for a failure message.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn kubeconfig_yaml(api: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
         clusters: [{{name: fake, cluster: {{server: \"http://{api}\"}}}}]\n\
         users: [{{name: fake, user: {{}}}}]\n\
         contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: default}}}}]\n"
    )
}

// --- A stand-in for the Kubernetes API ---------------------------------------------------------

type FakeBody = BoxBody<Bytes, Infallible>;

/// Resource lists the fake answers with no items (the controller's watches and lists).
const EMPTY_LISTS: &[&str] = &[
    "statefulsets",
    "deployments",
    "services",
    "endpointslices",
    "configmaps",
    "secrets",
    "poddisruptionbudgets",
    "networkpolicies",
    "pods",
    "events",
    "leases",
];

/// The WsClusters the fake lists: `chat` (valid) and `broken` (its Redis Secret is missing).
fn fake_clusters() -> Vec<Value> {
    let object = |name: &str, spec: Value| {
        serde_json::json!({
            "apiVersion": "wscluster.io/v1alpha1", "kind": "WsCluster",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "generation": 1, "resourceVersion": "1"},
            "spec": spec,
        })
    };
    vec![
        object("chat", serde_json::json!({"replicas": 1})),
        object(
            "broken",
            serde_json::json!({"replicas": 1, "redis": {"secretRef": {"name": "missing", "key": "url"}}}),
        ),
    ]
}

/// Serves an API that lists [`fake_clusters`] and nothing else, holds every watch open, echoes
/// every write, answers a status write with the cluster, and 404 to any other read.
async fn serve_fake_api() -> anyhow::Result<(SocketAddr, AbortOnDropHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let clusters = Arc::new(fake_clusters());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let clusters = clusters.clone();
            let service = service_fn(move |req| fake_answer(req, clusters.clone()));
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok((addr, AbortOnDropHandle::new(task)))
}

async fn fake_answer(
    req: Request<Incoming>,
    clusters: Arc<Vec<Value>>,
) -> Result<Response<FakeBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let segments: Vec<&str> = parts.uri.path().trim_matches('/').split('/').collect();
    let last = segments.last().copied().unwrap_or_default();
    let watch = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|q| q == "watch=true" || q == "watch=1");
    let named = |name: &str| {
        clusters
            .iter()
            .find(|c| c["metadata"]["name"] == name)
            .cloned()
    };
    let answer = match parts.method {
        Method::GET if watch => return Ok(never_ending()),
        Method::GET if last == "wsclusters" => {
            fake_json(StatusCode::OK, &fake_list(clusters.to_vec()))
        }
        Method::GET if EMPTY_LISTS.contains(&last) => fake_json(StatusCode::OK, &fake_list(vec![])),
        Method::PATCH | Method::PUT if last == "status" => {
            match segments
                .len()
                .checked_sub(2)
                .and_then(|i| named(segments[i]))
            {
                Some(cluster) => fake_json(StatusCode::OK, &cluster),
                None => fake_not_found(),
            }
        }
        Method::PATCH | Method::PUT | Method::POST => Response::new(Full::new(body).boxed()),
        _ => fake_not_found(),
    };
    Ok(answer)
}

fn fake_list(items: Vec<Value>) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items})
}

fn fake_json(status: StatusCode, value: &Value) -> Response<FakeBody> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = status;
    response
}

fn fake_not_found() -> Response<FakeBody> {
    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404});
    fake_json(StatusCode::NOT_FOUND, &status)
}

/// A 200 whose body never ends: a watch on which nothing ever happens.
fn never_ending() -> Response<FakeBody> {
    let pending = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
    Response::new(BodyExt::boxed(StreamBody::new(pending)))
}

/// A node on its own with real Redis and RabbitMQ; a client connects to it and gets a message
/// sent through the node's server API, then the node is scraped.
async fn node_scrape(dir: &Path) -> anyhow::Result<String> {
    let id = unique("metrics-series");
    let key = format!("key-{id}");
    let keys = dir.join("api-keys");
    std::fs::write(&keys, format!("{key}\n"))?;
    let mut command = Command::new(operator_binary()?);
    command
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--id",
            &format!("{id}-node-0"),
            "--cluster-id",
            &format!("e2e/{id}"),
        ])
        .args([
            "--redis-url",
            &redis_url(),
            "--redis-prefix",
            &format!("wscluster-test-{id}"),
        ])
        .args(["--amqp-url", &amqp_url()])
        .args([
            "--sessions-per-key",
            "1",
            "--session-policy",
            "replace-oldest",
        ])
        .arg("--api-keys-file")
        .arg(&keys);
    let node = spawn_announced(command, &dir.join("node.log")).await?;
    let base = format!("http://{}", node.addr);
    let result = async {
        let ws = format!("ws://{}", node.addr);
        let mut first = deliver_one(&ws, &base, &key, "n-1").await?;
        // A second session of the same user replaces the first (a `replaced` reset).
        let _second = connect_ready(&ws, "n-1").await?;
        wait_closed(&mut first).await?;
        refused_upgrade(&ws).await?;
        let admin = node.admin.context("the node announced no admin address")?;
        scrape(&format!("http://{admin}")).await
    }
    .await;
    wscluster_tests::backends::delete_redis_keys(&redis_url(), &format!("wscluster-test-{id}"))
        .await?;
    result
}

/// Local mode with two nodes and one proxy: a client of the second node connects through the
/// proxy and gets a message sent through the proxy's server API; a scale-down to one node
/// drains it (the proxy's `drain` reset), a request without a key is refused; then the proxy
/// is scraped.
async fn proxy_scrape() -> anyhow::Result<String> {
    let mut options = LocalOptions::real_backends("metrics-series", 2, 1);
    options.redis_url = None;
    options.amqp_url = None;
    let local = Local::start(options).await?;
    let result = async {
        let state = local.state().await?;
        let proxy = &state["proxies"][0];
        let ws = proxy["wsUrl"].as_str().context("no wsUrl in /api/state")?;
        let admin = proxy["adminUrl"]
            .as_str()
            .context("no adminUrl in /api/state")?;
        let api = local.server_api().await?;
        let api_url = api.urls.first().context("no proxy API URL")?;
        let user = user_of_last_member(&local.ring().await?)?;
        let mut socket = deliver_one(ws, api_url, &api.key, &user).await?;
        local.scale(1).await?;
        next_text_containing(&mut socket, "\"type\":\"reset\"")
            .await
            .context("no reset frame after the scale-down")?;
        refused_upgrade(ws).await?;
        scrape(admin).await
    }
    .await;
    local.stop().await?;
    result
}

/// A user the last member of `ring` owns (the member a scale-down by one drains).
fn user_of_last_member(ring: &wscluster_ring::Ring) -> anyhow::Result<String> {
    let last = ring.members().last().context("an empty ring")?.id.clone();
    for i in 0..1000 {
        let user = format!("p-{i}");
        if ring.owner(&user)?.id == last {
            return Ok(user);
        }
    }
    bail!("no user of {last} among 1000")
}

/// A client WebSocket.
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects `user` at `<ws>/connect/<user>` and waits for its `ready` frame: from then on a
/// send reaches the session.
async fn connect_ready(ws: &str, user: &str) -> anyhow::Result<Socket> {
    let url = format!("{ws}/connect/{user}");
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .with_context(|| format!("connecting {url}"))?;
    next_text_containing(&mut socket, "\"type\":\"ready\"")
        .await
        .with_context(|| format!("{user} got no ready frame"))?;
    Ok(socket)
}

/// Connects `user`, sends it one message through the server API at `api` and waits until the
/// client receives it; answers the connected socket.
async fn deliver_one(ws: &str, api: &str, key: &str, user: &str) -> anyhow::Result<Socket> {
    let mut socket = connect_ready(ws, user).await?;
    let text = format!("hello {user}");
    let response = send_once(api, key, user, &text).await?;
    anyhow::ensure!(
        response.status.is_success(),
        "sending to {user} via {api}{} answered {}: {}",
        Route::UserMessages(user.to_owned()).path(),
        response.status,
        response.text()
    );
    next_text_containing(&mut socket, &text)
        .await
        .with_context(|| format!("{user} got no message"))?;
    Ok(socket)
}

/// An upgrade without a key (a path no key source matches) is refused before the upgrade,
/// which counts an error.
async fn refused_upgrade(ws: &str) -> anyhow::Result<()> {
    let url = format!("{ws}/metrics-series/no-key");
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status().is_client_error() => {
            Ok(())
        }
        Err(e) => bail!("{url}: expected a 4xx refusal, got {e}"),
        Ok(_) => bail!("{url}: an upgrade without a key was accepted"),
    }
}

/// Waits until the server closes `socket`, within [`MESSAGE_TIMEOUT_SECONDS`].
async fn wait_closed(socket: &mut Socket) -> anyhow::Result<()> {
    let limit = Duration::from_secs(MESSAGE_TIMEOUT_SECONDS);
    let closed = async {
        while let Some(Ok(frame)) = socket.next().await {
            if frame.is_close() {
                return;
            }
        }
    };
    tokio::time::timeout(limit, closed)
        .await
        .with_context(|| format!("the replaced session was not closed within {limit:?}"))
}

/// Reads frames until a text frame contains `needle`, within [`MESSAGE_TIMEOUT_SECONDS`].
async fn next_text_containing<S>(socket: &mut S, needle: &str) -> anyhow::Result<()>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let limit = Duration::from_secs(MESSAGE_TIMEOUT_SECONDS);
    let found = tokio::time::timeout(limit, async {
        while let Some(frame) = socket.next().await {
            if let Message::Text(t) = frame?
                && t.as_str().contains(needle)
            {
                return anyhow::Ok(());
            }
        }
        bail!("the socket closed first")
    });
    found
        .await
        .with_context(|| format!("nothing within {limit:?}"))?
}

// --- The reader on its own -------------------------------------------------------------------

fn names(expr: &str) -> Vec<String> {
    metric_names(expr).into_iter().collect()
}

#[test]
fn the_reader_skips_functions_aggregations_label_lists_matchers_and_ranges() {
    assert_eq!(
        names(
            r#"sum by (cluster) (rate(foo_total{kind=~"a|b", x="}"}[5m])) / on (pod) group_left (x) bar > 0.5"#
        ),
        ["bar", "foo_total"]
    );
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le) (rate(x_bucket{cluster=~"$cluster"}[$__rate_interval])))"#
        ),
        ["x_bucket"]
    );
}

#[test]
fn the_reader_skips_empty_label_lists_set_operators_numbers_and_offsets() {
    assert_eq!(
        names("count(a < on (cluster) group_left () max by (cluster) (b)) or on () vector(0)"),
        ["a", "b"]
    );
    assert_eq!(
        names("max without (pod) (c) offset 5m and d unless e"),
        ["c", "d", "e"]
    );
    assert_eq!(names("1e-3 * f + 2 > bool g"), ["f", "g"]);
    assert_eq!(names("wscluster:ratio:rate5m"), ["wscluster:ratio:rate5m"]);
}

#[test]
fn the_reader_ignores_identifiers_inside_strings_and_grafana_variables() {
    assert_eq!(
        names(r#"label_replace(g{a='x y'}, "dst", "$1 other_name", "src", "(.*)") * $scale"#),
        ["g"]
    );
    assert_eq!(
        label_values_selector("label_values(m{a=\"b\"}, cluster)"),
        Some("m{a=\"b\"}")
    );
    assert_eq!(label_values_selector("up"), None);
}

#[test]
fn exported_names_carry_the_suffixes_of_their_type() {
    let text = "# TYPE c counter\nc_total 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\n# TYPE g gauge\ng 2\nuntyped{a=\"b\"} 3\n# EOF\n";
    let got: Vec<String> = exported_names(text).into_iter().collect();
    assert_eq!(
        got,
        ["c_total", "g", "h_bucket", "h_count", "h_sum", "untyped"]
    );
}
