//! Issue 13, node side, against the real binary: behind proxies the node serves exactly the key
//! the proxy verified, trusts nothing without the proxy secret, keeps its internals off the
//! public port, takes only API keys on the server API (rotated without a restart), and a
//! legitimate user on the same node keeps its session and its messages throughout.

mod common;

use common::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wscluster_ring::contract::{
    KEY_HEADER, PROXY_SECRET_HEADER, RING_VERSION_HEADER, api::Route, percent_encode,
};
use wscluster_ring::{Member, RingSnapshot};

const SECRET: &str = "proxy-secret-of-this-cluster";
/// What a user's JWT looks like: a bearer token that is not an API key.
const ALICE_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

/// A node behind proxies: `--proxy-secret-file` holding [`SECRET`], with `extra` flags.
async fn proxied_node(secret: &SecretFile, extra: &[&str]) -> Node {
    Node::spawn(
        "n-0",
        &[&["--proxy-secret-file", secret.path.as_str()], extra].concat(),
    )
    .await
}

/// The headers a proxy sets: its secret and, when it routed by a client's key, that key.
fn from_proxy(key: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![(PROXY_SECRET_HEADER, SECRET.to_owned())];
    if let Some(key) = key {
        headers.push((KEY_HEADER, percent_encode(key)));
    }
    headers
}

/// One request to the node's public port with `headers`.
async fn public(
    node: &Node,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&'static str, String)],
) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    http_with(&node.addr, method, path, body, &headers).await
}

/// An upgrade to `path` with `headers`: the socket after its ready notice, or the refusal.
async fn upgrade(
    node: &Node,
    path: &str,
    headers: &[(&'static str, String)],
) -> Result<Ws, (u16, Value)> {
    let mut request = format!("ws://{}{path}", node.addr)
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, value.parse().expect("header value"));
    }
    let connected = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(request))
        .await
        .expect("an answer in time");
    match connected {
        Ok((mut ws, _)) => {
            loop {
                let v = next_json(&mut ws).await;
                if v["type"] == "ready" {
                    break;
                }
            }
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// The refusal of an upgrade that must be refused.
async fn refused(node: &Node, path: &str, headers: &[(&'static str, String)]) -> (u16, Value) {
    match upgrade(node, path, headers).await {
        Ok(_) => panic!("the upgrade to {path} was accepted"),
        Err(refusal) => refusal,
    }
}

fn send_path(user: &str) -> String {
    Route::UserMessages(user.to_owned()).path()
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

fn code(answer: &(u16, Value)) -> (u16, Option<&str>) {
    (answer.0, answer.1["error"].as_str())
}

#[tokio::test]
async fn behind_proxies_alice_cannot_act_as_bob_and_bob_keeps_his_session_throughout() {
    within(STEP * 4, async {
        let secret = SecretFile::new(&[SECRET]);
        let node = proxied_node(&secret, &["--legacy-send"]).await;
        let mut bob = upgrade(&node, "/connect/bob", &from_proxy(Some("bob")))
            .await
            .expect("bob connects through the proxy");
        let alice = from_proxy(Some("alice"));
        let body = Some(r#"{"message":"from alice"}"#);

        // Alice's verified key opens only Alice's session.
        let got = refused(&node, "/connect/bob", &alice).await;
        assert_eq!(code(&got), (403, Some("key-mismatch")), "{got:?}");
        let got = refused(&node, "/connect?userId=bob", &alice).await;
        assert_eq!(code(&got), (403, Some("key-mismatch")));
        // The seed's /send names the user in the query or the body: refused for another user.
        let got = public(&node, "POST", "/send?userId=bob&message=x", None, &alice).await;
        assert_eq!(code(&got), (403, Some("key-mismatch")));
        let json = r#"{"userId":"bob","message":"x"}"#;
        let got = public(&node, "POST", "/send", Some(json), &alice).await;
        assert_eq!(code(&got), (403, Some("key-mismatch")));
        // Her token is no API key: no send to Bob, no broadcast, through the server API.
        let mut with_token = alice.clone();
        with_token.push(bearer(ALICE_TOKEN));
        let got = public(&node, "POST", &send_path("bob"), body, &with_token).await;
        assert_eq!(code(&got), (403, Some("forbidden")));
        let got = public(&node, "POST", "/api/v1/broadcast", body, &with_token).await;
        assert_eq!(code(&got), (403, Some("forbidden")));
        // Nor anonymously through a proxy, nor with the seed's public /broadcast.
        let got = public(&node, "POST", "/api/v1/broadcast", body, &from_proxy(None)).await;
        assert_eq!(code(&got), (401, Some("unauthorized")));
        let got = public(&node, "POST", "/broadcast?message=x", None, &alice).await;
        assert_eq!(code(&got), (403, Some("forbidden")));
        // A key header without the proxy secret is nobody's word.
        let forged = [(KEY_HEADER, "bob".to_owned())];
        let got = refused(&node, "/connect/bob", &forged).await;
        assert_eq!(code(&got), (401, Some("unauthorized")));
        let wrong = [
            (PROXY_SECRET_HEADER, format!("{SECRET}x")),
            (KEY_HEADER, "bob".to_owned()),
        ];
        let got = public(&node, "POST", "/send?userId=bob&message=x", None, &wrong).await;
        assert_eq!(code(&got), (401, Some("unauthorized")));

        // Bob got none of it and still gets what is really for him, from either source.
        let mut server = from_proxy(None);
        server.push(bearer(API_KEY));
        let got = public(
            &node,
            "POST",
            &send_path("bob"),
            Some(r#"{"message":"for bob"}"#),
            &server,
        )
        .await;
        assert_eq!(got.0, 200, "{got:?}");
        assert_eq!(got.1["delivered"], true);
        assert_eq!(next_json(&mut bob).await["content"], "for bob");
        let own = public(
            &node,
            "GET",
            "/send?message=own",
            None,
            &from_proxy(Some("bob")),
        )
        .await;
        assert_eq!(own.0, 200, "{own:?}");
        assert_eq!(next_json(&mut bob).await["content"], "own");
        // Alice, served as herself from the header alone.
        let mut alice_ws = upgrade(&node, "/connect", &alice).await.expect("alice");
        let got = public(
            &node,
            "POST",
            &send_path("alice"),
            Some(r#"{"message":"hi alice"}"#),
            &server,
        )
        .await;
        assert_eq!(got.0, 200, "{got:?}");
        assert_eq!(next_json(&mut alice_ws).await["content"], "hi alice");
    })
    .await;
}

#[tokio::test]
async fn nothing_internal_is_on_the_public_port() {
    within(STEP * 3, async {
        let secret = SecretFile::new(&[SECRET]);
        let node = proxied_node(&secret, &[]).await;
        let direct = Node::spawn("n-1", &[]).await;
        for path in [
            "/metrics",
            "/count",
            "/users/alice",
            "/healthz",
            "/readyz",
            "/send?userId=a&message=b",
        ] {
            for headers in [from_proxy(Some("alice")), from_proxy(None)] {
                let got = public(&node, "GET", path, None, &headers).await;
                assert_eq!(code(&got), (404, Some("not-found")), "{path}");
            }
            let got = public(&direct, "GET", path, None, &[]).await;
            assert_eq!(code(&got), (404, Some("not-found")), "{path}");
        }
        // The admin port has them.
        let (status, _) = http(&node.admin, "GET", "/healthz", None).await;
        assert_eq!(status, 200);
        let (status, count) = http(&node.admin, "GET", "/count", None).await;
        assert_eq!((status, count["count"].as_u64()), (200, Some(0)));
        let (status, _) = http(&node.admin, "GET", "/metrics", None).await;
        assert_eq!(status, 200);
        // Without --api-keys-file the server API is off.
        let keyless = Node::spawn_without_api("n-2", &[]).await;
        let got = public(
            &keyless,
            "POST",
            &send_path("a"),
            Some(r#"{"message":"x"}"#),
            &[bearer(API_KEY)],
        )
        .await;
        assert_eq!(got.0, 404, "{got:?}");
        assert_eq!(got.1["error"], "api-disabled");
        assert_eq!(got.1["message"], "server API disabled");
    })
    .await;
}

#[tokio::test]
async fn without_the_proxy_secret_internal_headers_grant_nothing() {
    within(STEP * 3, async {
        let node = Node::spawn("n-0", &["--legacy-send"]).await;
        let got = refused(
            &node,
            "/connect/bob",
            &[(PROXY_SECRET_HEADER, SECRET.to_owned())],
        )
        .await;
        assert_eq!(code(&got), (400, Some("internal-header")));
        let got = refused(
            &node,
            "/connect/bob",
            &[("x-wscluster-sender", "alice".to_owned())],
        )
        .await;
        assert_eq!(code(&got), (400, Some("internal-header")));
        // A key header only narrows: another path key is refused, the same one is served.
        let got = refused(&node, "/connect/bob", &[(KEY_HEADER, "alice".to_owned())]).await;
        assert_eq!(code(&got), (403, Some("key-mismatch")));
        let got = public(
            &node,
            "GET",
            "/send?userId=bob&message=x",
            None,
            &[(KEY_HEADER, "alice".to_owned())],
        )
        .await;
        assert_eq!(code(&got), (403, Some("key-mismatch")));
        let mut bob = upgrade(&node, "/connect/bob", &[])
            .await
            .expect("bob, directly");
        let (status, _) = node.send("bob", "direct").await;
        assert_eq!(status, 200);
        assert_eq!(next_json(&mut bob).await["content"], "direct");
    })
    .await;
}

#[tokio::test]
async fn api_keys_rotate_without_a_restart_and_a_session_stays_open() {
    within(STEP * 6, async {
        let keys = SecretFile::new(&["old-api-key"]);
        let node = Node::spawn("n-0", &["--api-keys-file", keys.path.as_str()]).await;
        let mut carol = upgrade(&node, "/connect/carol", &[]).await.expect("carol");
        let send = |key: &'static str| {
            let node = &node;
            async move {
                public(
                    node,
                    "POST",
                    &send_path("carol"),
                    Some(r#"{"message":"m"}"#),
                    &[bearer(key)],
                )
                .await
                .0
            }
        };
        assert_eq!(send("old-api-key").await, 200);
        assert_eq!(next_json(&mut carol).await["content"], "m");
        assert_eq!(send("new-api-key").await, 401);

        // Rotation, step 1: both keys valid.
        keys.write(&["old-api-key", "new-api-key"]);
        wait_for("the new key is accepted", || async {
            send("new-api-key").await == 200
        })
        .await;
        assert_eq!(next_json(&mut carol).await["content"], "m");
        assert_eq!(send("old-api-key").await, 200);
        assert_eq!(next_json(&mut carol).await["content"], "m");

        // Step 2: the old key is removed, and refused once the file says so.
        keys.write(&["new-api-key"]);
        wait_for("the old key is refused", || async {
            send("old-api-key").await == 401
        })
        .await;
        assert_eq!(send("new-api-key").await, 200);
        assert_eq!(next_json(&mut carol).await["content"], "m");

        // A broken file keeps the keys in use.
        keys.write(&["# nothing"]);
        let (status, _) = http(&node.admin, "GET", "/healthz", None).await;
        assert_eq!(status, 200);
        assert_eq!(send("new-api-key").await, 200);
        assert_eq!(next_json(&mut carol).await["content"], "m");
    })
    .await;
}

#[tokio::test]
async fn a_send_for_a_user_another_node_owns_is_421_with_the_ring_version_header() {
    within(STEP * 3, async {
        let snapshot = RingSnapshot::new(
            "test/trust",
            7,
            vec![
                Member::active("n-0", "127.0.0.1:1"),
                Member::active("n-1", "127.0.0.1:2"),
            ],
        );
        let ring = RingFile::holding(&snapshot);
        let node = Node::spawn(
            "n-0",
            &["--cluster-id", "test/trust", "--ring-file", &ring.path],
        )
        .await;
        node.poll("the ring is applied", "/readyz", |s, _| s == 200)
            .await;
        let theirs = key_owned_by(&snapshot, "n-1");
        let auth = format!("Bearer {API_KEY}");
        let (status, headers, body) = http_full(
            &node.addr,
            "POST",
            &send_path(&theirs),
            Some(r#"{"message":"x"}"#),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (421, Some("not-owner")),
            "{body}"
        );
        assert_eq!(body["owner"], "n-1");
        assert_eq!(
            headers
                .get(RING_VERSION_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("7")
        );
        // Presence is answered by any node.
        let (status, presence) = node
            .http("GET", &Route::UserPresence(theirs.clone()).path(), None)
            .await;
        assert_eq!((status, presence["online"].as_bool()), (200, Some(false)));
    })
    .await;
}

/// Polls `check` until it holds; a rotation is picked up within the reload interval (5 s).
async fn wait_for<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STEP * 2;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn chat_mode_sends_as_the_verified_key_and_is_refused_when_off() {
    within(STEP * 4, async {
        // Against Redis: the sender is stored with the message and comes back on a replay.
        let store = RedisScope::new().await;
        let node = store.node("n-0", &["--chat"]).await;
        let mut alice = upgrade(&node, "/connect/alice", &[]).await.expect("alice");
        let mut bob = upgrade(&node, "/connect/bob", &[]).await.expect("bob");
        send_text(&mut alice, r#"{"to":"bob","message":"hi bob"}"#).await;
        let got = next_json(&mut bob).await;
        assert_eq!(
            (
                got["type"].as_str(),
                got["content"].as_str(),
                got["from"].as_str()
            ),
            (Some("message"), Some("hi bob"), Some("alice")),
            "the sender is the verified key"
        );
        // A reconnecting Bob replays it with its sender; a server API send has none.
        let (mut bob_again, replay) = node.connect("/connect/bob?since=0").await;
        assert_eq!(replay[0]["from"], "alice", "{replay:?}");
        // A sender named in the payload is refused, and nothing reaches Bob.
        send_text(&mut alice, r#"{"to":"bob","message":"x","from":"carol"}"#).await;
        let refusal = next_json(&mut alice).await;
        assert_eq!(refusal["type"], "error", "{refusal}");
        send_text(&mut alice, r#"{"to":"","message":"x"}"#).await;
        assert_eq!(next_json(&mut alice).await["type"], "error");
        let (status, _) = node.send("bob", "marker").await;
        assert_eq!(status, 200);
        let marker = next_json(&mut bob).await;
        assert_eq!(marker["content"], "marker");
        assert!(marker.get("from").is_none(), "{marker}");
        assert_eq!(next_json(&mut bob_again).await["content"], "marker");
        // Alice's session is still open and chats on.
        send_text(&mut alice, r#"{"to":"bob","message":"again"}"#).await;
        assert_eq!(next_json(&mut bob).await["content"], "again");

        let off = Node::spawn("n-1", &[]).await;
        let mut carol = upgrade(&off, "/connect/carol", &[]).await.expect("carol");
        let mut dave = upgrade(&off, "/connect/dave", &[]).await.expect("dave");
        send_text(&mut carol, r#"{"to":"dave","message":"psst"}"#).await;
        let refusal = next_json(&mut carol).await;
        assert_eq!(refusal["type"], "error");
        assert!(
            refusal["content"]
                .as_str()
                .is_some_and(|c| c.contains("chat is off")),
            "{refusal}"
        );
        let (status, _) = off.send("dave", "only this").await;
        assert_eq!(status, 200);
        assert_eq!(next_json(&mut dave).await["content"], "only this");
        let (status, _) = off.send("carol", "still open").await;
        assert_eq!(status, 200);
        assert_eq!(next_json(&mut carol).await["content"], "still open");
        store.finish().await;
    })
    .await;
}
