//! Test support (feature `testing`): scheduler configurations other crates' tests start an EPP
//! with. The fake Kubernetes API server is `llmd_k8s::testing` (feature `testing` of
//! `llmd-k8s`).

/// A scheduler config that always chooses P/D: decode pods by the decode profile, prefill pods
/// by the prefill one, each picked at random.
pub const PD_CONFIG: &str = r#"
plugins:
  - type: decode-filter
  - type: prefill-filter
  - type: random-picker
  - type: pd-profile-handler
    parameters: {threshold: 0}
schedulingProfiles:
  - name: decode
    plugins: [{pluginRef: decode-filter}, {pluginRef: random-picker}]
  - name: prefill
    plugins: [{pluginRef: prefill-filter}, {pluginRef: random-picker}]
"#;
