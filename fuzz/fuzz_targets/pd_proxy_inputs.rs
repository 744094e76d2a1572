//! What the P/D proxy reads from outside: the `x-prefiller-host-port` header (allowlist check),
//! engine SSE lines and JSON bodies (the `cached_tokens` rewrite), client bodies (the nixlv2
//! transforms). Never panics; an accepted target is always `host:port` inside the allowlist.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmd_pd_proxy::allowlist::Allowlist;
use llmd_pd_proxy::nixl;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let allow = Allowlist::new(&["10.0.0.0/8".into(), "prefill-0".into()], false).expect("valid");
    if let Ok(target) = allow.check(&text) {
        let (host, port) = target.rsplit_once(':').expect("host:port");
        assert!(port.parse::<u16>().is_ok_and(|p| p != 0));
        let bare = host.trim_matches(['[', ']']);
        assert!(bare.eq_ignore_ascii_case("prefill-0") || bare.parse::<std::net::IpAddr>().is_ok());
    }
    for line in text.lines() {
        let _ = nixl::rewrite_sse_line(line, 7);
    }
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(data) {
        nixl::rewrite_cached(&mut v, 7);
        let _ = nixl::cached_tokens(&v);
        if let serde_json::Value::Object(m) = v {
            for api in [
                nixl::ApiType::ChatCompletions,
                nixl::ApiType::Responses,
                nixl::ApiType::Generate,
            ] {
                let _ = nixl::prefill_body(&m, api);
            }
            let _ = nixl::decode_body(&m, serde_json::Value::Null);
        }
    }
});
