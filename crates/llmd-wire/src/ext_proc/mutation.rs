//! Applying an ext_proc `HeaderMutation` the way Envoy does.

use crate::pb::envoy::service::ext_proc::v3::HeaderMutation;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Applies `mutation` to `headers`: `remove_headers` first, then `set_headers` with their
/// `append_action` (0 append or add, 1 add if absent, 2 overwrite or add, 3 overwrite only if
/// present). A value comes from `raw_value` when set, else `value`. Pseudo-headers and names
/// or values that are not valid HTTP are skipped.
pub fn apply_mutation(headers: &mut HeaderMap, mutation: &HeaderMutation) {
    for name in &mutation.remove_headers {
        if let Ok(n) = HeaderName::try_from(name.as_str()) {
            headers.remove(n);
        }
    }
    for opt in &mutation.set_headers {
        let Some(h) = &opt.header else { continue };
        if h.key.starts_with(':') {
            continue;
        }
        let raw = if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            &h.raw_value
        };
        let (Ok(n), Ok(v)) = (
            HeaderName::try_from(h.key.as_str()),
            HeaderValue::from_bytes(raw),
        ) else {
            continue;
        };
        match opt.append_action {
            0 => {
                headers.append(n, v);
            }
            1 => {
                if !headers.contains_key(&n) {
                    headers.insert(n, v);
                }
            }
            3 => {
                if headers.contains_key(&n) {
                    headers.insert(n, v);
                }
            }
            _ => {
                headers.insert(n, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::envoy::config::core::v3::{HeaderValue as PbValue, HeaderValueOption};

    fn set(key: &str, value: &str, action: i32, raw: bool) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(PbValue {
                key: key.into(),
                value: if raw { String::new() } else { value.into() },
                raw_value: if raw {
                    value.as_bytes().to_vec()
                } else {
                    Vec::new()
                },
            }),
            append_action: action,
            ..Default::default()
        }
    }

    #[test]
    fn actions_as_envoy_applies_them() {
        let mut h = HeaderMap::new();
        h.insert("x-append", HeaderValue::from_static("a"));
        h.insert("x-keep", HeaderValue::from_static("client"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        apply_mutation(
            &mut h,
            &HeaderMutation {
                set_headers: vec![
                    set("x-append", "b", 0, true),
                    set("x-keep", "epp", 1, true),
                    set("x-new", "epp", 1, false),
                    set("x-over", "v", 2, true),
                    set("x-only-if", "v", 3, true),
                    set(":path", "/evil", 2, true),
                ],
                remove_headers: vec!["x-gone".into()],
            },
        );
        let all = |k: &str| -> Vec<&str> {
            h.get_all(k)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        assert_eq!(all("x-append"), ["a", "b"]);
        assert_eq!(all("x-keep"), ["client"]);
        assert_eq!(all("x-new"), ["epp"]);
        assert_eq!(all("x-over"), ["v"]);
        assert!(all("x-only-if").is_empty());
        assert!(all("x-gone").is_empty());
        assert_eq!(h.keys_len(), 4);
    }
}
