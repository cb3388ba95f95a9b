//! Checks of a spec that the CRD schema cannot express, or that an API server without CEL
//! would not enforce. Pure; a failure becomes a `Degraded` condition with reason
//! `InvalidSpec`, never a crash, and touches no other cluster.

use crate::crd::{SecretKeyRef, WsClusterSpec};
use crate::resources::RESERVED_ENV;

/// A Secret key the spec depends on, and what for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    /// The reference.
    pub secret: SecretKeyRef,
    /// The spec field, for messages (`redis.secretRef`).
    pub field: &'static str,
}

/// Every Secret key the pods will read, in a fixed order (the order reconcile checks them).
pub fn referenced_secrets(spec: &WsClusterSpec) -> Vec<SecretUse> {
    let mut uses = Vec::new();
    if let Some(jwt) = spec.key_sources.iter().find_map(|s| s.jwt.as_ref()) {
        uses.push(SecretUse {
            secret: jwt.secret_ref.clone(),
            field: "keySources[].jwt.secretRef",
        });
    }
    for (conn, field) in [
        (&spec.redis, "redis.secretRef"),
        (&spec.rabbitmq, "rabbitmq.secretRef"),
    ] {
        if let Some(secret) = conn.as_ref().and_then(|c| c.secret_ref.clone()) {
            uses.push(SecretUse { secret, field });
        }
    }
    uses
}

/// Checks the rules the schema also states (for API servers that do not run CEL) and those it
/// cannot (reserved environment variables). The message names the field.
pub fn validate_spec(spec: &WsClusterSpec) -> Result<(), String> {
    for (i, source) in spec.key_sources.iter().enumerate() {
        let set = [
            source.path.is_some(),
            source.query.is_some(),
            source.header.is_some(),
            source.cookie.is_some(),
            source.jwt.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(format!(
                "keySources[{i}] sets {set} of path, query, header, cookie, jwt; exactly one is needed"
            ));
        }
        if let Some(path) = &source.path
            && (!path.starts_with('/') || path.matches("{key}").count() != 1)
        {
            return Err(format!(
                "keySources[{i}].path {path:?} must start with / and contain {{key}} exactly once"
            ));
        }
    }
    if spec.key_sources.is_empty() {
        return Err("keySources is empty; at least one is needed".into());
    }
    if spec.key_sources.iter().filter(|s| s.jwt.is_some()).count() > 1 {
        return Err("at most one keySource may be a jwt source".into());
    }
    for (conn, field) in [(&spec.redis, "redis"), (&spec.rabbitmq, "rabbitmq")] {
        if let Some(c) = conn
            && c.url.is_some() == c.secret_ref.is_some()
        {
            return Err(format!("{field}: set exactly one of url or secretRef"));
        }
    }
    for (env, field) in [(&spec.node.env, "node.env"), (&spec.proxy.env, "proxy.env")] {
        if let Some(e) = env.iter().find(|e| RESERVED_ENV.contains(&e.name.as_str())) {
            return Err(format!(
                "{field} sets {}, which the operator sets itself",
                e.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ConnectionSpec, KeySource};
    use k8s_openapi::api::core::v1::EnvVar;

    #[test]
    fn the_default_spec_is_valid_and_references_no_secret() {
        let spec = WsClusterSpec::default();
        assert_eq!(validate_spec(&spec), Ok(()));
        assert!(referenced_secrets(&spec).is_empty());
    }

    #[test]
    fn a_key_source_with_two_fields_is_refused_with_its_index() {
        let mut spec = WsClusterSpec::default();
        spec.key_sources[1].header = Some("X-User".into());
        let err = validate_spec(&spec).expect_err("invalid");
        assert!(err.starts_with("keySources[1] sets 2"), "{err}");
    }

    #[test]
    fn a_path_without_key_is_refused() {
        let spec = WsClusterSpec {
            key_sources: vec![KeySource {
                path: Some("/connect".into()),
                ..KeySource::default()
            }],
            ..WsClusterSpec::default()
        };
        assert!(validate_spec(&spec).expect_err("invalid").contains("{key}"));
    }

    #[test]
    fn shadowing_an_operator_env_var_is_refused() {
        let mut spec = WsClusterSpec::default();
        spec.proxy.env.push(EnvVar {
            name: "WSCLUSTER_RING_URL".into(),
            value: Some("http://evil".into()),
            value_from: None,
        });
        assert_eq!(
            validate_spec(&spec),
            Err("proxy.env sets WSCLUSTER_RING_URL, which the operator sets itself".into())
        );
    }

    #[test]
    fn a_connection_with_both_url_and_secret_is_refused_and_secrets_are_listed() {
        let mut spec = WsClusterSpec::default();
        let secret = SecretKeyRef {
            name: "r".into(),
            key: "url".into(),
        };
        spec.redis = Some(ConnectionSpec {
            url: Some("redis://x".into()),
            secret_ref: Some(secret.clone()),
        });
        assert!(validate_spec(&spec).is_err());
        spec.redis = Some(ConnectionSpec {
            url: None,
            secret_ref: Some(secret.clone()),
        });
        assert_eq!(validate_spec(&spec), Ok(()));
        assert_eq!(
            referenced_secrets(&spec),
            [SecretUse {
                secret,
                field: "redis.secretRef"
            }]
        );
    }
}
