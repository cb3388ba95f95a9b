//! JWT as identity providers issue it (issue 13 §4), through the real proxy binary: audience
//! and issuer, a JWKS with two `kid`s, and key rotation by rewriting the key file with no
//! restart and no dropped connection.

mod support;

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::*;

const SECRET_1: &[u8] = b"first-secret-0123456789abcdef-xx";
const SECRET_2: &[u8] = b"second-secret-0123456789abcdef-x";

fn token(kid: Option<&str>, claims: serde_json::Value, secret: &[u8]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).expect("sign")
}

fn exp() -> u64 {
    jsonwebtoken::get_current_timestamp() + 300
}

/// The status an upgrade with `token` (in the query) gets: 101 or the refusal's.
async fn upgrade_status(proxy: &Proxy, token: &str) -> StatusCode {
    match tokio_tungstenite::connect_async(proxy.ws_url(&format!("/connect?access_token={token}")))
        .await
    {
        Ok(_) => StatusCode::SWITCHING_PROTOCOLS,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status(),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

async fn jwt_proxy(dir: &Path, backend: &Backend, jwt: &str) -> Proxy {
    let ring = dir.join("ring.json");
    write_ring(&ring, 1, vec![backend.member()]);
    let config = format!("keySources:\n  - jwt: {{from: query, {jwt}}}\n");
    let proxy = Proxy::spawn(dir, &config, Ring::File(&ring)).await;
    proxy.wait_ring_version(1).await;
    proxy
}

#[tokio::test]
async fn tokens_with_aud_and_iss_are_accepted_when_they_match_and_refused_when_they_differ() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let backend = Backend::start("node-a").await;
        let dir = temp_dir("jwt-aud");
        std::fs::write(dir.join("key"), SECRET_1).expect("key");
        let jwt = format!(
            "keyFile: {}, audience: chat, issuer: \"https://idp.example\"",
            dir.join("key").display()
        );
        let proxy = jwt_proxy(&dir, &backend, &jwt).await;
        let claims =
            |aud: &str, iss: &str| json!({"sub": "alice", "exp": exp(), "aud": aud, "iss": iss});
        let ok = token(None, claims("chat", "https://idp.example"), SECRET_1);
        assert_eq!(
            upgrade_status(&proxy, &ok).await,
            StatusCode::SWITCHING_PROTOCOLS
        );
        for bad in [
            claims("other", "https://idp.example"),
            claims("chat", "https://evil.example"),
        ] {
            let t = token(None, bad.clone(), SECRET_1);
            assert_eq!(
                upgrade_status(&proxy, &t).await,
                StatusCode::UNAUTHORIZED,
                "{bad}"
            );
        }

        // Without audience and issuer configured, an IdP's token (aud and iss set) is fine.
        let backend = Backend::start("node-b").await;
        let dir = temp_dir("jwt-no-aud");
        std::fs::write(dir.join("key"), SECRET_1).expect("key");
        let jwt = format!("keyFile: {}", dir.join("key").display());
        let proxy = jwt_proxy(&dir, &backend, &jwt).await;
        let idp = token(
            Some("any"),
            claims("some-api", "https://idp.example"),
            SECRET_1,
        );
        assert_eq!(
            upgrade_status(&proxy, &idp).await,
            StatusCode::SWITCHING_PROTOCOLS
        );
    })
    .await
    .expect("test finished in time");
}

fn jwks(keys: &[(&str, &[u8])]) -> String {
    let keys = keys
        .iter()
        .map(|(kid, secret)| {
            let mut jwk =
                Jwk::from_encoding_key(&EncodingKey::from_secret(secret), Algorithm::HS256)
                    .expect("jwk");
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).expect("json")
}

#[tokio::test]
async fn a_jwks_with_two_kids_verifies_each_token_with_its_own_key() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let backend = Backend::start("node-a").await;
        let dir = temp_dir("jwt-jwks");
        std::fs::write(
            dir.join("jwks.json"),
            jwks(&[("k1", SECRET_1), ("k2", SECRET_2)]),
        )
        .expect("jwks");
        let jwt = format!("jwksFile: {}", dir.join("jwks.json").display());
        let proxy = jwt_proxy(&dir, &backend, &jwt).await;
        let claims = json!({"sub": "alice", "exp": exp()});
        for (kid, secret, wanted) in [
            ("k1", SECRET_1, StatusCode::SWITCHING_PROTOCOLS),
            ("k2", SECRET_2, StatusCode::SWITCHING_PROTOCOLS),
            ("k1", SECRET_2, StatusCode::UNAUTHORIZED),
            ("k3", SECRET_1, StatusCode::UNAUTHORIZED),
        ] {
            let t = token(Some(kid), claims.clone(), secret);
            assert_eq!(upgrade_status(&proxy, &t).await, wanted, "{kid}");
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn a_rewritten_key_file_takes_effect_without_a_restart_or_a_dropped_connection() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let backend = Backend::start("node-a").await;
        let dir = temp_dir("jwt-rotate");
        let key = dir.join("key");
        write_atomically(&key, std::str::from_utf8(SECRET_1).expect("utf8"));
        let jwt = format!("keyFile: {}", key.display());
        let proxy = jwt_proxy(&dir, &backend, &jwt).await;
        let claims = json!({"sub": "alice", "exp": exp()});
        let (old, new) = (
            token(None, claims.clone(), SECRET_1),
            token(None, claims, SECRET_2),
        );
        let (mut open, _) = connect(&proxy.ws_url(&format!("/connect?access_token={old}"))).await;
        assert_eq!(upgrade_status(&proxy, &new).await, StatusCode::UNAUTHORIZED);

        write_atomically(&key, std::str::from_utf8(SECRET_2).expect("utf8"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while upgrade_status(&proxy, &new).await != StatusCode::SWITCHING_PROTOCOLS {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new key was never used"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(upgrade_status(&proxy, &old).await, StatusCode::UNAUTHORIZED);
        // A broken file keeps the keys in use.
        write_atomically(&key, "short");
        let errors = "wscluster_proxy_errors_total{kind=\"jwt-key-reload\"}";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while proxy.metric(errors).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broken file was never read"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            upgrade_status(&proxy, &new).await,
            StatusCode::SWITCHING_PROTOCOLS
        );
        // The connection opened under the old key was never touched.
        echo(&mut open, "still open").await;
    })
    .await
    .expect("test finished in time");
}
