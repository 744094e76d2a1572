//! docs/coming-from-llm-d.md covers every plugin type the EPP builds, accepts or refuses, and
//! the chart's schema offers exactly the ones it builds or accepts.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use llmd_epp::config::PluginSpec;
use llmd_epp::plugins::{passive, registry, unsupported};

fn doc() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/coming-from-llm-d.md"
    );
    std::fs::read_to_string(path).unwrap()
}

fn spec(kind: &str) -> PluginSpec {
    PluginSpec {
        kind: kind.into(),
        name: None,
        parameters: None,
    }
}

#[test]
fn every_plugin_type_is_in_the_doc() {
    let doc = doc();
    let built = registry::TYPES.iter().map(|t| t.name);
    let accepted = passive::TYPES.iter().copied();
    let refused = unsupported::UNSUPPORTED.iter().map(|(t, _)| *t);
    let missing: Vec<&str> = built
        .chain(accepted)
        .chain(refused)
        .filter(|t| !doc.contains(&format!("`{t}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/coming-from-llm-d.md: {missing:?}"
    );
}

#[test]
fn passive_types_are_the_ones_accepted() {
    for t in passive::TYPES {
        assert!(passive::build(&spec(t)).is_some(), "{t}");
    }
    assert!(passive::build(&spec("queue-scorer")).is_none());
}

#[test]
fn the_chart_schema_offers_what_the_epp_builds() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../charts/llmd-epp/values.schema.json"
    );
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut offered: Vec<String> = schema["definitions"]["pluginType"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    offered.sort();
    let mut known: Vec<String> = registry::TYPES
        .iter()
        .map(|t| t.name.to_owned())
        .chain(passive::TYPES.iter().map(|t| (*t).to_owned()))
        .collect();
    known.sort();
    assert_eq!(offered, known);
}
