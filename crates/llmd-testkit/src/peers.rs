//! The external peers tests run against, found one way, with one policy when one is missing.
//!
//! | peer | found at | set up by |
//! |---|---|---|
//! | [`python`] | `$LLMD_TEST_PYTHON`, else `.venv/bin/python` at the workspace root | `scripts/setup-python.sh` |
//! | [`envoy_bin`] | `$LLMD_TEST_ENVOY`, else `.venv-envoy/bin/envoy` at the workspace root | `scripts/setup-envoy.sh` |
//! | [`promtool`] | `promtool` on `PATH` | `scripts/setup-system.sh` (Debian's `prometheus`) |
//! | [`tokenizer_hub`] | `.cache/hf/hub` at the workspace root (HF cache layout) | `scripts/fetch-tokenizers.sh` |
//!
//! **When a peer is missing** ([`missing`]): with `CI` set (to anything, as `scripts/test.sh`
//! and CI runners set it) the test panics, naming the peer and the script that provides it, so
//! a run that could not test something never passes. Without `CI` the test prints
//! `SKIPPED: <peer> (<how to get it>)` to stderr and returns early: a laptop without Envoy still
//! runs the rest.
//!
//! **An override that names nothing** (`LLMD_TEST_PYTHON` or `LLMD_TEST_ENVOY` set to a path that
//! does not exist) panics, with or without `CI`: an explicit choice is never silently replaced by
//! the default (the copies this module replaced fell back to the venv).

use std::path::{Path, PathBuf};

/// The workspace root (the directory of the top-level `Cargo.toml`).
pub fn workspace_root() -> &'static Path {
    // This crate is `crates/llmd-testkit` of the workspace, always (publish = false).
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("crates/llmd-testkit is two levels under the workspace root")
}

/// True when `CI` is set: missing peers fail tests instead of skipping them.
pub fn strict() -> bool {
    std::env::var_os("CI").is_some()
}

/// The policy for a missing peer: panics under `CI`; else prints `SKIPPED: <what> (<how>)` and
/// returns, and the caller skips. `how` says how to get the peer (a script to run).
#[track_caller]
pub fn missing(what: &str, how: &str) {
    assert!(!strict(), "CI must provide {what}: {how}");
    eprintln!("SKIPPED: {what} ({how})");
}

/// Where a peer was looked for and what was found.
#[derive(Debug, PartialEq)]
enum Found {
    At(PathBuf),
    /// The override names a path that does not exist.
    BadOverride(String),
    Missing,
}

/// The override when set (it must exist), else `default` when it exists.
fn choose(var: &str, set: Option<PathBuf>, default: PathBuf) -> Found {
    match set {
        Some(path) if path.exists() => Found::At(path),
        Some(path) => Found::BadOverride(format!(
            "{var}={} does not exist (unset it to use {})",
            path.display(),
            default.display()
        )),
        None if default.exists() => Found::At(default),
        None => Found::Missing,
    }
}

/// `$<var>` when set (it must exist: else a panic), else `default` when it exists, else
/// [`missing`].
#[track_caller]
fn lookup(var: &str, default: PathBuf, what: &str, how: &str) -> Option<PathBuf> {
    match choose(var, std::env::var_os(var).map(PathBuf::from), default) {
        Found::At(path) => Some(path),
        Found::BadOverride(message) => panic!("{message}"),
        Found::Missing => {
            missing(what, how);
            None
        }
    }
}

/// The test venv's Python (pyzmq, the openai client, transformers, vLLM's msgspec types):
/// `$LLMD_TEST_PYTHON`, else `.venv/bin/python` at the workspace root. `None` (skip) when
/// missing outside `CI`.
#[track_caller]
pub fn python() -> Option<PathBuf> {
    lookup(
        "LLMD_TEST_PYTHON",
        workspace_root().join(".venv/bin/python"),
        "the Python test venv",
        "bash scripts/setup-python.sh",
    )
}

/// A real Envoy (the gateway's parity tests): `$LLMD_TEST_ENVOY`, else `.venv-envoy/bin/envoy`
/// at the workspace root. `None` (skip) when missing outside `CI`.
#[track_caller]
pub fn envoy_bin() -> Option<PathBuf> {
    lookup(
        "LLMD_TEST_ENVOY",
        workspace_root().join(".venv-envoy/bin/envoy"),
        "Envoy",
        "bash scripts/setup-envoy.sh",
    )
}

/// Prometheus's `promtool` on `PATH`. `None` (skip) when missing outside `CI`.
#[track_caller]
pub fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        missing(
            "promtool",
            "bash scripts/setup-system.sh installs prometheus",
        );
    }
    found
}

/// Checks a Prometheus text exposition with `promtool check metrics`, the real Prometheus
/// parser: exit 0, or 3 (naming lints only, which the contract's names trip: `llm_d` reads as
/// days, `:` in vLLM's names, milliseconds), and no "error while linting" (a parse failure).
/// Returns false when promtool is missing (outside `CI`; see [`promtool`]).
#[track_caller]
pub fn promtool_check_metrics(text: &str) -> bool {
    use std::io::Write;
    let Some(bin) = promtool() else {
        return false;
    };
    let mut child = std::process::Command::new(&bin)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("promtool reads its stdin");
    let out = child.wait_with_output().expect("promtool finishes");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "promtool failed: {report}"
    );
    assert!(
        !report.contains("error while linting"),
        "promtool: {report}"
    );
    true
}

/// The HF-cache-layout directory `scripts/fetch-tokenizers.sh` fills (`.cache/hf/hub` at the
/// workspace root), whether or not it exists yet; `HF_HUB_CACHE` for processes tests start.
pub fn tokenizer_hub() -> PathBuf {
    workspace_root().join(".cache/hf/hub")
}

/// How to get the tokenizer files, for [`missing`].
pub const FETCH_TOKENIZERS: &str = "bash scripts/fetch-tokenizers.sh";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_root_is_the_one_with_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
            .expect("the workspace manifest");
        assert!(manifest.contains("[workspace]"));
        assert!(workspace_root().join("crates/llmd-testkit").is_dir());
    }

    #[test]
    fn an_override_wins_and_must_exist_and_the_default_is_used_only_without_one() {
        let here = workspace_root().join("Cargo.toml");
        let nowhere = workspace_root().join("no/such/file");
        // Set and there: the override, even when the default exists too.
        let other = workspace_root().join("README.md");
        assert_eq!(
            choose("V", Some(other.clone()), here.clone()),
            Found::At(other)
        );
        // Set but not there: an error naming the variable, never the default instead.
        match choose("V", Some(nowhere.clone()), here.clone()) {
            Found::BadOverride(m) => assert!(m.starts_with("V=") && m.contains("does not exist")),
            f => panic!("{f:?}"),
        }
        // Unset: the default when it exists, else missing.
        assert_eq!(choose("V", None, here.clone()), Found::At(here));
        assert_eq!(choose("V", None, nowhere), Found::Missing);
    }
}
