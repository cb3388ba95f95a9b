//! The fallback ring ConfigMap: every ring the operator publishes is also written, as the JSON
//! snapshot `--ring-file` reads ([`RingSnapshot::to_json`], the one serialised form), into
//! `<cluster>-ring` under [`RING_FILE_KEY`]. Nodes and proxies mount it beside `--ring-url`, so
//! a pod that starts while the operator is down or changing leader routes on the last ring
//! instead of answering 503 (`wscluster_ring_stream::merge_rings` keeps the stream
//! authoritative and versions moving forward).
//!
//! The object is a pure function ([`ring_config_map`]); [`apply_ring_config_map`] applies it with
//! server-side apply and the operator's field manager, like every other child.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use wscluster_ring::RingSnapshot;

use crate::error::Result;
use crate::resources::{ClusterRef, Component, FIELD_MANAGER, RING_FILE_KEY, ring_config_map_name};

/// The ConfigMap holding `snapshot` as the cluster's fallback ring file: owned by the
/// WsCluster (deleted with it), labelled like the other generated objects.
pub fn ring_config_map(cluster: &ClusterRef, snapshot: &RingSnapshot) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ring_config_map_name(&cluster.name)),
            namespace: Some(cluster.namespace.clone()),
            labels: Some(cluster.labels(Component::Config)),
            owner_references: Some(vec![cluster.owner.clone()]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            RING_FILE_KEY.to_string(),
            snapshot.to_json(),
        )])),
        ..ConfigMap::default()
    }
}

/// Applies [`ring_config_map`] (server-side apply, forced, the operator's field manager).
///
/// # Errors
///
/// The API request failed.
pub async fn apply_ring_config_map(
    client: &Client,
    cluster: &ClusterRef,
    snapshot: &RingSnapshot,
) -> Result<()> {
    let map = ring_config_map(cluster, snapshot);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cluster.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(
        &ring_config_map_name(&cluster.name),
        &params,
        &Patch::Apply(&map),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wscluster_ring::Member;

    use super::*;
    use crate::crd::WsCluster;
    use crate::fixtures::{FakeHub, TestClock, WsClusterExt, mock_context};

    fn snapshot() -> RingSnapshot {
        RingSnapshot::new(
            "default/chat",
            7,
            vec![Member::active("chat-node-0", "10.0.0.1:8080")],
        )
    }

    #[tokio::test]
    async fn the_ring_is_applied_as_the_ring_file_the_pods_mount() {
        let (ctx, mut server) = mock_context(FakeHub::new(), TestClock::new());
        let cluster = ClusterRef::of(&WsCluster::test()).expect("identity");
        let snapshot = snapshot();
        let scenario = async {
            let body = server
                .apply("/api/v1/namespaces/default/configmaps/chat-ring")
                .await;
            assert_eq!(body["kind"], "ConfigMap");
            assert_eq!(body["metadata"]["name"], "chat-ring");
            assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "WsCluster");
            assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
            assert_eq!(
                body["metadata"]["labels"]["app.kubernetes.io/component"],
                "config"
            );
            let text = body["data"][RING_FILE_KEY].as_str().expect("ring.json");
            let parsed = RingSnapshot::from_json(text).expect("the ring file format");
            assert_eq!(parsed, snapshot);
        };
        let (applied, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(
                apply_ring_config_map(&ctx.client, &cluster, &snapshot),
                scenario
            )
        })
        .await
        .expect("in time");
        applied.expect("applied");
    }
}
