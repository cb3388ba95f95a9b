//! Checks of a spec that the CRD schema cannot express, or that an API server without CEL
//! would not enforce. The key sources, resets and limits are checked by the proxy's own
//! `ProxyConfig::validate`, on the configuration rendered from them. Pure; a failure becomes a
//! `Degraded` condition with reason `InvalidSpec`, never a crash, and touches no other cluster.

use crate::crd::{
    MAX_NODE_LIMIT, OPERATOR_LABELS, OPERATOR_MOUNT_ROOTS, OPERATOR_VOLUMES, PodTemplate,
    SecretKeyRef, WsClusterSpec, WsClusterStatus,
};
use crate::resources::{CONFIG_HASH_ANNOTATION, RESERVED_ENV, proxy_config};

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
    for (conn, field) in [
        (&spec.redis, "redis.caSecretRef"),
        (&spec.rabbitmq, "rabbitmq.caSecretRef"),
    ] {
        if let Some(secret) = conn.as_ref().and_then(|c| c.ca_secret_ref.clone()) {
            uses.push(SecretUse { secret, field });
        }
    }
    if let Some(tls) = &spec.proxy.tls {
        let sni = tls
            .sni_secret_refs
            .iter()
            .map(|s| (s, "proxy.tls.sniSecretRefs"));
        for (secret, field) in std::iter::once((&tls.secret_ref, "proxy.tls.secretRef")).chain(sni)
        {
            for key in ["tls.crt", "tls.key"] {
                uses.push(SecretUse {
                    secret: SecretKeyRef {
                        name: secret.name.clone(),
                        key: key.into(),
                    },
                    field,
                });
            }
        }
    }
    uses
}

/// Checks the rules the schema also states (for API servers that do not run CEL) and those it
/// cannot (reserved environment variables, the proxy's own checks of its configuration). The
/// message names the field.
pub fn validate_spec(spec: &WsClusterSpec) -> Result<(), String> {
    // Key sources, resets and limits: exactly the checks the proxy runs on the file rendered
    // from them.
    proxy_config(spec)?;
    for (conn, field) in [(&spec.redis, "redis"), (&spec.rabbitmq, "rabbitmq")] {
        if let Some(c) = conn
            && c.url.is_some() == c.secret_ref.is_some()
        {
            return Err(format!("{field}: set exactly one of url or secretRef"));
        }
        if let Some(c) = conn {
            c.check_cluster(field)?;
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
    validate_node_limits(spec)?;
    validate_pod_template(&spec.node.pod, "node.pod")?;
    validate_pod_template(&spec.proxy.pod, "proxy.pod")
}

/// The pod template rules the CRD's CEL also states: nothing a user adds may take a label,
/// annotation, volume name or mount directory of the operator's.
pub fn validate_pod_template(t: &PodTemplate, field: &str) -> Result<(), String> {
    if let Some(k) = t
        .labels
        .keys()
        .find(|k| OPERATOR_LABELS.contains(&k.as_str()))
    {
        return Err(format!(
            "{field}.labels sets {k}, which the operator sets itself"
        ));
    }
    if t.annotations.contains_key(CONFIG_HASH_ANNOTATION) {
        return Err(format!(
            "{field}.annotations sets {CONFIG_HASH_ANNOTATION}, which the operator sets itself"
        ));
    }
    if let Some(v) = t
        .volumes
        .iter()
        .find(|v| OPERATOR_VOLUMES.contains(&v.name.as_str()))
    {
        return Err(format!(
            "{field}.volumes uses the name {}, which the operator uses",
            v.name
        ));
    }
    for m in &t.volume_mounts {
        let inside =
            |root: &&&str| m.mount_path == **root || m.mount_path.starts_with(&format!("{root}/"));
        if let Some(root) = OPERATOR_MOUNT_ROOTS.iter().find(inside) {
            return Err(format!(
                "{field}.volumeMounts mounts {} inside {root}, which the operator uses",
                m.mount_path
            ));
        }
        if !t.volumes.iter().any(|v| v.name == m.name) {
            return Err(format!(
                "{field}.volumeMounts names {}, which is not in {field}.volumes",
                m.name
            ));
        }
    }
    Ok(())
}

/// `ring.slots` against the slot count of the ring last published (`status.ringSlots`): a
/// change remaps most keys, so it needs `ring.allowRemap: true`. The CRD's CEL transition rule
/// says the same at apply time; this covers an API server without it, and a status written
/// before the rule existed.
pub fn validate_ring_change(
    spec: &WsClusterSpec,
    status: Option<&WsClusterStatus>,
) -> Result<(), String> {
    match status.and_then(|s| s.ring_slots) {
        Some(published) if published != spec.ring.slots && !spec.ring.allow_remap => Err(format!(
            "ring.slots is {}, but the published ring has {published} slots: a new slot count \
             remaps most keys; set ring.allowRemap: true to change it on purpose",
            spec.ring.slots
        )),
        _ => Ok(()),
    }
}

/// The node-side limits: each, when set, within its range; a policy needs a cap to apply to.
fn validate_node_limits(spec: &WsClusterSpec) -> Result<(), String> {
    let ranges = [
        ("sessions.perKey", spec.sessions.per_key, 1000),
        (
            "node.maxHttpConnections",
            spec.node.max_http_connections,
            MAX_NODE_LIMIT,
        ),
        (
            "node.maxInflightSends",
            spec.node.max_inflight_sends,
            MAX_NODE_LIMIT,
        ),
    ];
    for (field, value, max) in ranges {
        if let Some(v) = value
            && !(1..=max).contains(&v)
        {
            return Err(format!("{field} must be between 1 and {max}, not {v}"));
        }
    }
    if spec.sessions.policy.is_some() && spec.sessions.per_key.is_none() {
        return Err("sessions.policy needs sessions.perKey, the cap it applies to".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ConnectionSpec, JwtSource, KeySource, WsCluster};
    use k8s_openapi::api::core::v1::EnvVar;
    use kube::CustomResourceExt;
    use serde_json::Value;

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
    fn node_limits_out_of_range_are_refused_naming_the_field() {
        type Break = fn(&mut WsClusterSpec);
        let cases: [(Break, &str); 5] = [
            (
                |s| s.sessions.per_key = Some(0),
                "sessions.perKey must be between 1 and 1000, not 0",
            ),
            (
                |s| s.sessions.per_key = Some(1001),
                "sessions.perKey must be between 1 and 1000, not 1001",
            ),
            (
                |s| s.node.max_http_connections = Some(-1),
                "node.maxHttpConnections must be between 1 and 1000000, not -1",
            ),
            (
                |s| s.node.max_inflight_sends = Some(1_000_001),
                "node.maxInflightSends must be between 1 and 1000000, not 1000001",
            ),
            (
                |s| s.sessions.policy = Some(crate::crd::SessionPolicy::Refuse),
                "sessions.policy needs sessions.perKey, the cap it applies to",
            ),
        ];
        for (break_it, message) in cases {
            let mut spec = WsClusterSpec::default();
            break_it(&mut spec);
            assert_eq!(validate_spec(&spec), Err(message.to_string()));
        }
        let mut spec = WsClusterSpec::default();
        spec.sessions.per_key = Some(1);
        spec.sessions.policy = Some(crate::crd::SessionPolicy::ReplaceOldest);
        spec.node.max_http_connections = Some(1_000_000);
        spec.node.max_inflight_sends = Some(1);
        spec.server.legacy_send = true;
        assert_eq!(validate_spec(&spec), Ok(()));
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
            cluster: false,
            url: Some("redis://x".into()),
            secret_ref: Some(secret.clone()),
            ca_secret_ref: None,
        });
        assert!(validate_spec(&spec).is_err());
        spec.redis = Some(ConnectionSpec {
            cluster: false,
            url: None,
            secret_ref: Some(secret.clone()),
            ca_secret_ref: None,
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

    fn jwt_source() -> KeySource {
        KeySource {
            jwt: Some(JwtSource {
                claim: "sub".into(),
                algorithm: Default::default(),
                secret_ref: SecretKeyRef {
                    name: "jwt".into(),
                    key: "key".into(),
                },
                from: Default::default(),
                query_param: "access_token".into(),
                audience: None,
                issuer: None,
                leeway_seconds: 30,
                jwks: false,
            }),
            ..KeySource::default()
        }
    }

    #[test]
    fn a_value_the_proxy_would_refuse_is_refused_with_the_spec_field_named() {
        type Break = fn(&mut WsClusterSpec);
        let cases: [(Break, &str); 8] = [
            (
                |s| s.proxy.limits.max_header_bytes = 100,
                "proxy.limits.maxHeaderBytes must be 8192 to 1048576",
            ),
            (
                |s| s.proxy.limits.connect_timeout_ms = 0,
                "proxy.limits.connectTimeoutMs must be at least 1",
            ),
            (|s| s.resets.rate_per_second = 0, "resets.ratePerSecond"),
            (|s| s.drain_timeout_seconds = -1, "drainTimeoutSeconds"),
            (|s| s.key_sources.clear(), "at least one"),
            (
                // The CEL rule refuses it too; an API server without CEL does not.
                |s| s.key_sources[0].path = Some("/connect/x{key}".into()),
                "keySources[0]: path pattern",
            ),
            (
                |s| s.key_sources[1].query = None,
                "keySources[1] sets 0 of path, query, header, cookie, jwt",
            ),
            (
                |s| s.key_sources = vec![jwt_source(), jwt_source()],
                "at most one jwt",
            ),
        ];
        for (break_it, needle) in cases {
            let mut spec = WsClusterSpec::default();
            break_it(&mut spec);
            let err = validate_spec(&spec).expect_err(needle);
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    /// `spec` with the integer at `path` set to `value`, if the types can hold it.
    fn spec_with(path: &[&str], value: i64) -> Option<WsClusterSpec> {
        let mut json = serde_json::to_value(WsClusterSpec::default()).expect("serialises");
        let field = path.iter().try_fold(&mut json, |v, key| v.get_mut(*key))?;
        *field = Value::from(value);
        serde_json::from_value(json).ok()
    }

    #[test]
    fn every_bound_the_crd_states_for_resets_and_limits_is_the_proxy_s() {
        let crd = serde_json::to_value(WsCluster::crd()).expect("serialises");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut checked = 0;
        for parent in [&["resets"][..], &["proxy", "limits"]] {
            let schema = parent.iter().fold(spec, |s, key| &s["properties"][*key]);
            let fields = schema["properties"].as_object().expect("properties");
            for (name, field) in fields {
                let path = [parent, &[name.as_str()][..]].concat();
                for (bound, step) in [("minimum", -1), ("maximum", 1)] {
                    let Some(at) = field[bound].as_f64().map(|b| b as i64) else {
                        continue;
                    };
                    let on = spec_with(&path, at).expect("the bound fits the type");
                    assert_eq!(validate_spec(&on), Ok(()), "{path:?} = {at}");
                    if let Some(past) = spec_with(&path, at + step) {
                        let err = validate_spec(&past).expect_err(name);
                        assert!(
                            err.contains(name.as_str()),
                            "{path:?} = {}: {err}",
                            at + step
                        );
                    }
                    checked += 1;
                }
            }
        }
        // resets: 2 + 1 maximum; limits: 6 minimums + 1 maximum.
        assert!(checked >= 10, "only {checked} bounds found");
    }

    #[test]
    fn a_pod_template_that_would_collide_with_the_operator_is_refused_naming_the_field() {
        use k8s_openapi::api::core::v1::{Volume, VolumeMount};
        type Break = fn(&mut WsClusterSpec);
        let cases: [(Break, &str); 6] = [
            (
                |s| {
                    s.node
                        .pod
                        .labels
                        .insert("app.kubernetes.io/component".into(), "x".into());
                },
                "node.pod.labels sets app.kubernetes.io/component",
            ),
            (
                |s| {
                    s.proxy
                        .pod
                        .annotations
                        .insert(CONFIG_HASH_ANNOTATION.into(), "x".into());
                },
                "proxy.pod.annotations sets wscluster.io/config-hash",
            ),
            (
                |s| {
                    s.proxy.pod.volumes.push(Volume {
                        name: "ring-token".into(),
                        ..Volume::default()
                    })
                },
                "proxy.pod.volumes uses the name ring-token",
            ),
            (
                |s| {
                    s.node.pod.volumes.push(Volume {
                        name: "data".into(),
                        ..Volume::default()
                    });
                    s.node.pod.volume_mounts.push(VolumeMount {
                        name: "data".into(),
                        mount_path: "/etc/wscluster/tls".into(),
                        ..VolumeMount::default()
                    });
                },
                "node.pod.volumeMounts mounts /etc/wscluster/tls inside /etc/wscluster",
            ),
            (
                |s| {
                    s.node.pod.volume_mounts.push(VolumeMount {
                        name: "data".into(),
                        mount_path: "/data".into(),
                        ..VolumeMount::default()
                    });
                },
                "node.pod.volumeMounts names data, which is not in node.pod.volumes",
            ),
            (
                |s| {
                    s.node.env.push(EnvVar {
                        name: "WSCLUSTER_LOG_FORMAT".into(),
                        ..EnvVar::default()
                    });
                },
                "node.env sets WSCLUSTER_LOG_FORMAT",
            ),
        ];
        for (bad, message) in cases {
            let mut spec = WsClusterSpec::default();
            bad(&mut spec);
            let err = validate_spec(&spec).expect_err(message);
            assert!(err.starts_with(message), "{err}");
        }
        let mut fine = WsClusterSpec::default();
        fine.node.pod.volumes.push(Volume {
            name: "data".into(),
            ..Volume::default()
        });
        fine.node.pod.volume_mounts.push(VolumeMount {
            name: "data".into(),
            mount_path: "/etc/wscluster-app".into(),
            ..VolumeMount::default()
        });
        assert_eq!(validate_spec(&fine), Ok(()));
    }

    #[test]
    fn a_slot_change_needs_allow_remap() {
        let mut spec = WsClusterSpec::default();
        let status = WsClusterStatus {
            ring_slots: Some(spec.ring.slots),
            ..WsClusterStatus::default()
        };
        assert_eq!(validate_ring_change(&spec, Some(&status)), Ok(()));
        assert_eq!(validate_ring_change(&spec, None), Ok(()));
        spec.ring.slots *= 2;
        let err = validate_ring_change(&spec, Some(&status)).expect_err("remap");
        assert!(err.contains("ring.allowRemap: true"), "{err}");
        spec.ring.allow_remap = true;
        assert_eq!(validate_ring_change(&spec, Some(&status)), Ok(()));
    }

    #[test]
    fn tls_and_ca_secrets_are_checked_before_the_pods_need_them() {
        let mut spec = WsClusterSpec::default();
        spec.proxy.tls = Some(crate::crd::ProxyTls {
            secret_ref: crate::crd::SecretRef {
                name: "edge".into(),
            },
            port: 8443,
            sni_secret_refs: Vec::new(),
        });
        spec.redis = Some(ConnectionSpec {
            cluster: false,
            url: Some("rediss://r:6380".into()),
            secret_ref: None,
            ca_secret_ref: Some(SecretKeyRef {
                name: "ca".into(),
                key: "ca.crt".into(),
            }),
        });
        let uses: Vec<(String, String, &str)> = referenced_secrets(&spec)
            .into_iter()
            .map(|u| (u.secret.name, u.secret.key, u.field))
            .collect();
        assert_eq!(
            uses,
            [
                ("ca".to_string(), "ca.crt".to_string(), "redis.caSecretRef"),
                (
                    "edge".to_string(),
                    "tls.crt".to_string(),
                    "proxy.tls.secretRef"
                ),
                (
                    "edge".to_string(),
                    "tls.key".to_string(),
                    "proxy.tls.secretRef"
                ),
            ]
        );
    }
}
