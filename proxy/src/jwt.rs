//! The JWT key source as identity providers issue tokens: the configured algorithm only
//! (HS256, RS256, PS256, ES256, EdDSA), `exp` required and `nbf` honoured with
//! `leewaySeconds`, `aud` and `iss` enforced when configured (and `aud` not checked when no
//! audience is), the verifying key chosen by the token's `kid` from a JWKS document
//! (`jwksFile`) or the one key of `keyFile`.
//!
//! Key files are re-read by [`JwtSource::reload`] (the proxy calls it every few seconds, as
//! Kubernetes updates a mounted Secret in place): a changed file that parses replaces the keys
//! for new tokens; a broken one is reported and the previous keys stay. Connections already
//! open are never touched.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::{JwtAlgorithm, JwtSpec, TokenFrom};
use crate::error::{Error, Result};

/// Smallest HS256 secret accepted, in bytes.
const MIN_HS256_SECRET: usize = 16;

/// The keys tokens are verified with, and the file text they came from (to notice changes).
struct KeySet {
    /// The file's bytes as read.
    text: Vec<u8>,
    /// `(kid, key)`; a key file gives one key without a kid.
    keys: Vec<(Option<String>, DecodingKey)>,
}

/// A verified-token source: what to read, how to check it, and the current keys.
pub struct JwtSource {
    /// The claim holding the business key.
    pub claim: String,
    /// Where the token is read from.
    pub from: TokenFrom,
    /// The query parameter for `from: query`.
    pub query_param: String,
    /// The configured algorithm.
    algorithm: JwtAlgorithm,
    /// The checks every token passes.
    validation: Validation,
    /// The file the keys come from, and whether it is a JWKS document; `None` when the key was
    /// given as bytes (never reloaded).
    file: Option<(PathBuf, bool)>,
    /// The current keys, swapped whole on a reload.
    keys: ArcSwap<KeySet>,
}

impl fmt::Debug for JwtSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSource")
            .field("claim", &self.claim)
            .field("from", &self.from)
            .field("file", &self.file)
            .field("keys", &self.keys.load().keys.len())
            .finish_non_exhaustive()
    }
}

/// The jsonwebtoken algorithm of a configured one.
fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

impl JwtSource {
    /// The source of `spec`, its keys read from `jwksFile` when set, else `keyFile`.
    ///
    /// # Errors
    ///
    /// The file cannot be read or holds no usable key for the algorithm.
    pub fn open(spec: &JwtSpec) -> Result<JwtSource> {
        let (path, jwks) = match &spec.jwks_file {
            Some(p) => (p.clone(), true),
            None => (spec.key_file.clone(), false),
        };
        let text = std::fs::read(&path).map_err(|e| Error::JwtKey {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let keys = parse_keys(spec.algorithm, &text, jwks).map_err(|reason| Error::JwtKey {
            path: path.clone(),
            reason,
        })?;
        Ok(JwtSource::build(
            spec,
            Some((path, jwks)),
            KeySet { text, keys },
        ))
    }

    /// The source of `spec` with its one key given as bytes (tests, embedding): never
    /// reloaded.
    ///
    /// # Errors
    ///
    /// The bytes are not a usable key for the algorithm.
    pub fn with_key(spec: &JwtSpec, bytes: &[u8]) -> Result<JwtSource> {
        let keys = parse_keys(spec.algorithm, bytes, false).map_err(|reason| Error::JwtKey {
            path: spec.key_file.clone(),
            reason,
        })?;
        let text = bytes.to_vec();
        Ok(JwtSource::build(spec, None, KeySet { text, keys }))
    }

    fn build(spec: &JwtSpec, file: Option<(PathBuf, bool)>, keys: KeySet) -> JwtSource {
        let mut validation = Validation::new(algorithm(spec.algorithm));
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.leeway = spec.leeway_seconds;
        match &spec.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &spec.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        JwtSource {
            claim: spec.claim.clone(),
            from: spec.from,
            query_param: spec.query_param.clone(),
            algorithm: spec.algorithm,
            validation,
            file,
            keys: ArcSwap::from_pointee(keys),
        }
    }

    /// Re-reads the key file: `Ok(true)` when new keys are in use, `Ok(false)` when the file
    /// is unchanged (or there is none). On error the previous keys stay.
    ///
    /// # Errors
    ///
    /// The file cannot be read or holds no usable key.
    pub fn reload(&self) -> Result<bool> {
        let Some((path, jwks)) = &self.file else {
            return Ok(false);
        };
        let failed = |reason: String| Error::JwtKey {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
        if text == self.keys.load().text {
            return Ok(false);
        }
        let keys = parse_keys(self.algorithm, &text, *jwks).map_err(failed)?;
        self.keys.store(Arc::new(KeySet { text, keys }));
        Ok(true)
    }

    /// The key file, if there is one to follow.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(p, _)| p.as_path())
    }

    /// Verifies `token`: its claims, or why it is refused (for the 401's message).
    pub fn verify(
        &self,
        token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("invalid token: {e}"))?;
        let set = self.keys.load();
        let by_kid = header
            .kid
            .as_deref()
            .and_then(|kid| set.keys.iter().find(|(k, _)| k.as_deref() == Some(kid)));
        let key = match (by_kid, set.keys.as_slice()) {
            (Some((_, key)), _) => key,
            // One key (a key file, or a JWKS of one): it verifies whatever the token's kid.
            (None, [(_, only)]) => only,
            (None, _) => {
                return Err(match header.kid {
                    Some(kid) => format!("no key with kid {kid:?}"),
                    None => "the token has no kid and several keys are configured".into(),
                });
            }
        };
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token.as_bytes(),
            key,
            &self.validation,
        )
        .map(|data| data.claims)
        .map_err(|e| format!("invalid token: {e}"))
    }
}

/// The keys of a key file (`jwks` false: an HS256 secret, or a PEM public key) or of a JWKS
/// document (only keys usable with `algorithm` are kept; none is an error).
fn parse_keys(
    alg: JwtAlgorithm,
    text: &[u8],
    jwks: bool,
) -> Result<Vec<(Option<String>, DecodingKey)>, String> {
    if jwks {
        return parse_jwks(alg, text);
    }
    let key = match alg {
        JwtAlgorithm::HS256 => {
            let secret = text.strip_suffix(b"\n").unwrap_or(text);
            let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
            if secret.len() < MIN_HS256_SECRET {
                return Err(format!(
                    "an HS256 secret must be at least {MIN_HS256_SECRET} bytes"
                ));
            }
            DecodingKey::from_secret(secret)
        }
        JwtAlgorithm::RS256 | JwtAlgorithm::PS256 => {
            DecodingKey::from_rsa_pem(text).map_err(|e| e.to_string())?
        }
        JwtAlgorithm::ES256 => DecodingKey::from_ec_pem(text).map_err(|e| e.to_string())?,
        JwtAlgorithm::EdDSA => DecodingKey::from_ed_pem(text).map_err(|e| e.to_string())?,
    };
    Ok(vec![(None, key)])
}

/// The keys of a JWKS document usable with `alg`: of its family, not marked for another
/// algorithm, not for encryption.
fn parse_jwks(
    alg: JwtAlgorithm,
    text: &[u8],
) -> Result<Vec<(Option<String>, DecodingKey)>, String> {
    let set: JwkSet =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let wanted = algorithm(alg);
    let keys: Vec<_> = set
        .keys
        .iter()
        .filter(|jwk| {
            let marked = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::try_from(a).ok());
            marked.is_none_or(|a| a == wanted)
                && !matches!(
                    jwk.common.public_key_use,
                    Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                )
        })
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            (key.family() == wanted.family()).then(|| (jwk.common.key_id.clone(), key))
        })
        .collect();
    if keys.is_empty() {
        return Err(format!("the JWKS holds no key usable with {wanted:?}"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const ED_PRIVATE: &[u8] = include_bytes!("../tests/data/ed25519-private.pem");
    const ED_PUBLIC: &[u8] = include_bytes!("../tests/data/ed25519-public.pem");
    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/data/rsa-private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/data/rsa-public.pem");
    const SECRET_1: &[u8] = b"first-secret-0123456789abcdef";
    const SECRET_2: &[u8] = b"second-secret-0123456789abcdef";

    fn spec(algorithm: JwtAlgorithm) -> JwtSpec {
        JwtSpec {
            claim: "sub".into(),
            algorithm,
            key_file: "unused".into(),
            from: TokenFrom::Header,
            query_param: "access_token".into(),
            audience: None,
            issuer: None,
            leeway_seconds: 30,
            jwks_file: None,
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn sign(
        alg: Algorithm,
        kid: Option<&str>,
        claims: serde_json::Value,
        key: &EncodingKey,
    ) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, key).expect("sign")
    }

    fn hs(kid: Option<&str>, claims: serde_json::Value, secret: &[u8]) -> String {
        sign(
            Algorithm::HS256,
            kid,
            claims,
            &EncodingKey::from_secret(secret),
        )
    }

    fn temp_file(name: &str, text: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wscluster-jwt-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("key");
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn eddsa_and_ps256_tokens_verify_with_pem_keys_and_only_with_their_algorithm() {
        let claims = json!({"sub": "alice", "exp": now() + 60});
        let ed = JwtSource::with_key(&spec(JwtAlgorithm::EdDSA), ED_PUBLIC).expect("ed key");
        let ed_key = EncodingKey::from_ed_pem(ED_PRIVATE).expect("ed private");
        let token = sign(Algorithm::EdDSA, None, claims.clone(), &ed_key);
        assert_eq!(ed.verify(&token).expect("EdDSA")["sub"], "alice");

        let ps = JwtSource::with_key(&spec(JwtAlgorithm::PS256), RSA_PUBLIC).expect("rsa key");
        let rsa_key = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa private");
        let token = sign(Algorithm::PS256, None, claims.clone(), &rsa_key);
        assert_eq!(ps.verify(&token).expect("PS256")["sub"], "alice");
        // The same key signing RS256 is not what this source accepts.
        let rs = sign(Algorithm::RS256, None, claims, &rsa_key);
        assert!(ps.verify(&rs).is_err());
        assert!(JwtSource::with_key(&spec(JwtAlgorithm::EdDSA), RSA_PUBLIC).is_err());
    }

    #[test]
    fn audience_and_issuer_are_enforced_when_set_and_aud_ignored_when_not() {
        let claims =
            |aud: &str, iss: &str| json!({"sub": "a", "exp": now() + 60, "aud": aud, "iss": iss});
        let open = JwtSource::with_key(&spec(JwtAlgorithm::HS256), SECRET_1).expect("key");
        // As every identity provider issues them: with aud and iss, and nothing configured.
        assert!(
            open.verify(&hs(None, claims("api", "idp"), SECRET_1))
                .is_ok()
        );

        let mut strict = spec(JwtAlgorithm::HS256);
        strict.audience = Some("chat".into());
        strict.issuer = Some("https://idp.example".into());
        let strict = JwtSource::with_key(&strict, SECRET_1).expect("key");
        assert!(
            strict
                .verify(&hs(None, claims("chat", "https://idp.example"), SECRET_1))
                .is_ok()
        );
        let aud_list = json!({"sub": "a", "exp": now() + 60, "aud": ["x", "chat"], "iss": "https://idp.example"});
        assert!(strict.verify(&hs(None, aud_list, SECRET_1)).is_ok());
        assert!(
            strict
                .verify(&hs(None, claims("other", "https://idp.example"), SECRET_1))
                .is_err()
        );
        assert!(
            strict
                .verify(&hs(None, claims("chat", "https://evil.example"), SECRET_1))
                .is_err()
        );
        let bare = json!({"sub": "a", "exp": now() + 60});
        assert!(
            strict.verify(&hs(None, bare, SECRET_1)).is_err(),
            "aud and iss are required"
        );
    }

    #[test]
    fn leeway_is_the_configured_one() {
        let late = hs(None, json!({"sub": "a", "exp": now() - 10}), SECRET_1);
        let lenient = JwtSource::with_key(&spec(JwtAlgorithm::HS256), SECRET_1).expect("key");
        assert!(lenient.verify(&late).is_ok());
        let mut exact = spec(JwtAlgorithm::HS256);
        exact.leeway_seconds = 0;
        let exact = JwtSource::with_key(&exact, SECRET_1).expect("key");
        assert!(exact.verify(&late).is_err());
    }

    fn jwks(keys: &[(&str, &[u8])]) -> Vec<u8> {
        let keys: Vec<Jwk> = keys
            .iter()
            .map(|(kid, secret)| {
                let mut jwk =
                    Jwk::from_encoding_key(&EncodingKey::from_secret(secret), Algorithm::HS256)
                        .expect("jwk");
                jwk.common.key_id = Some((*kid).to_owned());
                jwk
            })
            .collect();
        serde_json::to_vec(&JwkSet { keys }).expect("json")
    }

    #[test]
    fn a_jwks_with_two_kids_verifies_each_token_with_the_key_it_names() {
        let path = temp_file("jwks", &jwks(&[("k1", SECRET_1), ("k2", SECRET_2)]));
        let mut s = spec(JwtAlgorithm::HS256);
        s.jwks_file = Some(path.clone());
        let source = JwtSource::open(&s).expect("jwks");
        let claims = json!({"sub": "alice", "exp": now() + 60});
        assert!(
            source
                .verify(&hs(Some("k1"), claims.clone(), SECRET_1))
                .is_ok()
        );
        assert!(
            source
                .verify(&hs(Some("k2"), claims.clone(), SECRET_2))
                .is_ok()
        );
        assert!(
            source
                .verify(&hs(Some("k2"), claims.clone(), SECRET_1))
                .is_err()
        );
        let unknown = source.verify(&hs(Some("k3"), claims.clone(), SECRET_1));
        assert!(unknown.expect_err("unknown kid").contains("k3"));
        assert!(
            source.verify(&hs(None, claims, SECRET_1)).is_err(),
            "no kid, two keys"
        );
        // A JWKS with no key for the algorithm is refused.
        let rsa_only =
            json!({"keys": [{"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB", "alg": "RS256"}]});
        std::fs::write(&path, rsa_only.to_string()).expect("write");
        assert!(source.reload().is_err());
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_rewritten_key_file_is_picked_up_and_a_broken_one_keeps_the_old_keys() {
        let path = temp_file("rotate", SECRET_1);
        let mut s = spec(JwtAlgorithm::HS256);
        s.key_file = path.clone();
        let source = JwtSource::open(&s).expect("key");
        let claims = json!({"sub": "alice", "exp": now() + 60});
        let (one, two) = (
            hs(None, claims.clone(), SECRET_1),
            hs(None, claims, SECRET_2),
        );
        assert!(source.verify(&one).is_ok() && source.verify(&two).is_err());
        assert!(!source.reload().expect("unchanged"));
        std::fs::write(&path, b"short").expect("write");
        assert!(source.reload().is_err());
        assert!(source.verify(&one).is_ok(), "the previous key stays");
        std::fs::write(&path, SECRET_2).expect("write");
        assert!(source.reload().expect("changed"));
        assert!(source.verify(&two).is_ok() && source.verify(&one).is_err());
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
