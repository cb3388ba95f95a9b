//! `wscluster-operator render -f wscluster.yaml`: the children reconcile would apply for a
//! `WsCluster`, printed as multi-document YAML, without an API server.
//!
//! The objects come from the same [`crate::resources`] functions reconcile uses, so the
//! packaging checks (`tests/packaging/test_pod_security.py`) validate exactly what the
//! operator creates. The generated Secrets get fresh random values, as on a first reconcile.
//! A manifest without `metadata.namespace` renders into `default`; one without `metadata.uid`
//! (any file not read back from a cluster) gets a placeholder uid in the owner references.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::crd::WsCluster;
use crate::error::{Error, Result};
use crate::resources::{self, Generated, Settings};

/// The owner uid of a manifest that has none (it was never created in a cluster).
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// Every child of the `WsCluster` in `yaml`, in the order reconcile applies them, as YAML
/// documents separated by `---`. `new_token` makes each generated Secret value.
///
/// # Errors
///
/// The file is not a `WsCluster`, its spec is invalid ([`crate::validate::validate_spec`]), or
/// an object cannot be serialised.
pub fn render_children(
    yaml: &str,
    settings: &Settings,
    new_token: fn(&str) -> String,
) -> Result<String> {
    let mut cluster: WsCluster = serde_yaml::from_str(yaml).map_err(|e| Error::Render {
        what: "WsCluster manifest",
        message: e.to_string(),
    })?;
    crate::validate::validate_spec(&cluster.spec).map_err(Error::InvalidSpec)?;
    let meta = &mut cluster.metadata;
    meta.namespace.get_or_insert_with(|| "default".into());
    meta.uid.get_or_insert_with(|| PLACEHOLDER_UID.into());
    let c = &cluster;
    let name = resources::ClusterRef::of(c)?;
    let mut docs = vec![to_yaml(&resources::config_map(c)?)?];
    for which in Generated::ALL {
        let values: BTreeMap<String, String> = which
            .keys()
            .iter()
            .map(|key| {
                let token = new_token(&format!("{}/{key}", name.generated_name(which)));
                ((*key).to_string(), resources::initial_value(which, &token))
            })
            .collect();
        docs.push(to_yaml(&resources::generated_secret(c, which, &values)?)?);
    }
    docs.push(to_yaml(&resources::node_service(c)?)?);
    docs.push(to_yaml(&resources::proxy_service(c)?)?);
    docs.push(to_yaml(&resources::proxy_api_service(c)?)?);
    docs.push(to_yaml(&resources::metrics_service(c)?)?);
    docs.push(to_yaml(&resources::node_pdb(c)?)?);
    docs.push(to_yaml(&resources::proxy_pdb(c)?)?);
    docs.push(to_yaml(&resources::node_network_policy(
        c,
        &settings.operator_namespace,
    )?)?);
    docs.push(to_yaml(&resources::node_statefulset(
        c,
        settings,
        c.spec.replicas,
    )?)?);
    let config_hash = resources::proxy_config_hash(c)?;
    docs.push(to_yaml(&resources::proxy_deployment(
        c,
        settings,
        &config_hash,
    )?)?);
    Ok(docs.join("---\n"))
}

/// One object as YAML with its `apiVersion` and `kind` (k8s-openapi adds them when it
/// serialises).
fn to_yaml<K: Serialize>(object: &K) -> Result<String> {
    serde_yaml::to_string(object).map_err(|e| Error::Render {
        what: "child object",
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: wscluster.io/v1alpha1
kind: WsCluster
metadata:
  name: chat
spec:
  replicas: 2
";

    fn settings() -> Settings {
        Settings {
            ring_url: "http://op:7400".into(),
            operator_namespace: "wscluster-system".into(),
        }
    }

    #[test]
    fn a_manifest_renders_every_child_with_kind_and_namespace() {
        let yaml = render_children(MANIFEST, &settings(), |p| format!("t-{p}")).expect("renders");
        let kinds: Vec<(String, String)> = yaml
            .split("---\n")
            .map(|doc| {
                let v: serde_json::Value = serde_yaml::from_str(doc).expect("yaml");
                assert_eq!(v["metadata"]["namespace"], "default", "{doc}");
                assert_eq!(
                    v["metadata"]["ownerReferences"][0]["uid"], PLACEHOLDER_UID,
                    "{doc}"
                );
                (
                    v["kind"].as_str().unwrap_or_default().to_string(),
                    v["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        let expected = [
            ("ConfigMap", "chat-config"),
            ("Secret", "chat-ring-token"),
            ("Secret", "chat-proxy-secret"),
            ("Secret", "chat-api-keys"),
            ("Service", "chat-node"),
            ("Service", "chat-proxy"),
            ("Service", "chat-api"),
            ("Service", "chat-metrics"),
            ("PodDisruptionBudget", "chat-node"),
            ("PodDisruptionBudget", "chat-proxy"),
            ("NetworkPolicy", "chat-node"),
            ("StatefulSet", "chat-node"),
            ("Deployment", "chat-proxy"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, n)| ((*k).to_string(), (*n).to_string()))
            .collect();
        assert_eq!(kinds, expected);
    }

    #[test]
    fn an_invalid_manifest_is_refused_with_the_reason() {
        let bad = MANIFEST.replace("replicas: 2", "sessions:\n    perKey: 0");
        let error = render_children(&bad, &settings(), |p| p.to_string()).expect_err("invalid");
        assert!(error.to_string().contains("sessions.perKey"), "{error}");
        let error = render_children("kind: [", &settings(), |p| p.to_string()).expect_err("yaml");
        assert!(error.to_string().contains("WsCluster manifest"), "{error}");
    }
}
