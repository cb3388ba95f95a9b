//! The exact Kubernetes API permissions the operator needs, as one table.
//!
//! `wscluster-operator rbac` prints it as JSON (`[{"apiGroups":[..],"resources":[..],"verbs":[..]}]`);
//! the Helm chart's ClusterRole is checked against that output, and the API mock tests assert
//! that every request reconcile makes is covered here, so the table can neither lag behind the
//! code nor grant more than it uses.

use serde::Serialize;

/// One RBAC `PolicyRule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// API groups (`""` is the core group).
    pub api_groups: &'static [&'static str],
    /// Resources, with `/subresource` where one is needed.
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
}

/// Verbs for a kind the operator owns: watched (controller `.owns()`), read, and written with
/// server-side apply (`patch`; `create` because an apply that creates the object is also
/// authorised as a create).
const OWNED: &[&str] = &["get", "list", "watch", "create", "patch"];

/// Every rule the operator needs.
pub const RULES: &[Rule] = &[
    // The custom resource: watched, and its status written.
    Rule {
        api_groups: &["wscluster.io"],
        resources: &["wsclusters"],
        verbs: &["get", "list", "watch"],
    },
    Rule {
        api_groups: &["wscluster.io"],
        resources: &["wsclusters/status"],
        verbs: &["get", "patch"],
    },
    // Owned children.
    Rule {
        api_groups: &["apps"],
        resources: &["statefulsets", "deployments"],
        verbs: OWNED,
    },
    Rule {
        api_groups: &[""],
        resources: &["services", "configmaps"],
        verbs: OWNED,
    },
    Rule {
        api_groups: &["policy"],
        resources: &["poddisruptionbudgets"],
        verbs: OWNED,
    },
    Rule {
        api_groups: &["networking.k8s.io"],
        resources: &["networkpolicies"],
        verbs: OWNED,
    },
    // Secrets are read one by one by name (the generated ones and the user's referenced
    // Secrets), and the generated ones are created with a server-side apply (`create` and
    // `patch`); never listed or watched, so the operator cannot read every Secret of the
    // cluster in one call. RBAC cannot narrow further: `resourceNames` cannot restrict
    // `create`, and the names depend on each WsCluster's name.
    Rule {
        api_groups: &[""],
        resources: &["secrets"],
        verbs: &["get", "create", "patch"],
    },
    // Membership.
    Rule {
        api_groups: &["discovery.k8s.io"],
        resources: &["endpointslices"],
        verbs: &["get", "list", "watch"],
    },
    // Events about ring changes, drains and errors.
    Rule {
        api_groups: &["events.k8s.io"],
        resources: &["events"],
        verbs: &["create", "patch"],
    },
    // Leader election.
    Rule {
        api_groups: &["coordination.k8s.io"],
        resources: &["leases"],
        verbs: &["get", "create", "update"],
    },
];

/// Whether [`RULES`] allows `verb` on `resource` (with `/subresource`) in `group`.
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    RULES.iter().any(|r| {
        r.api_groups.contains(&group) && r.resources.contains(&resource) && r.verbs.contains(&verb)
    })
}

/// [`RULES`] as pretty JSON.
pub fn rules_json() -> String {
    serde_json::to_string_pretty(RULES).unwrap_or_else(|e| unreachable!("rules serialise: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_print_as_policy_rules() {
        let v: serde_json::Value = serde_json::from_str(&rules_json()).expect("json");
        let first = &v[0];
        assert_eq!(first["apiGroups"][0], "wscluster.io");
        assert_eq!(first["resources"][0], "wsclusters");
        assert!(first["verbs"].as_array().is_some_and(|v| v.len() == 3));
    }

    #[test]
    fn secrets_cannot_be_listed_and_nothing_can_be_deleted() {
        assert!(allows("", "secrets", "get"));
        assert!(!allows("", "secrets", "list"));
        assert!(!allows("", "secrets", "watch"));
        assert!(RULES.iter().all(|r| !r.verbs.contains(&"delete")));
        assert!(allows("wscluster.io", "wsclusters/status", "patch"));
        assert!(!allows("wscluster.io", "wsclusters", "patch"));
    }
}
