//! TLS on the EPP's ext_proc port (`llmd epp --secure-serving`), through the gateway's EPP
//! client: a self-signed certificate dialled without verification (as llm-d's Envoy
//! configuration dials its EPP), a mounted certificate verified against its CA
//! (`--epp-ca-file`), and a rotated certificate served to new connections.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{epp, epp_tls, gateway, recorded, sim};
use llmd_epp::endpoints::Role;
use serde_json::json;

const CONFIG: &str = "plugins: [{type: random-picker}]\nschedulingProfiles: [{name: default, plugins: [{pluginRef: random-picker}]}]\n";

/// What the server at `addr` presents to a new connection: its leaf certificate and the ALPN
/// protocol agreed when the client offers h2 and http/1.1.
async fn handshake(addr: SocketAddr) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut config = llmd_wire::tls::client_config(None, true).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (_, conn) = tls.get_ref();
    (
        conn.peer_certificates().unwrap()[0].to_vec(),
        conn.alpn_protocol().map(<[u8]>::to_vec),
    )
}

async fn complete(gw: SocketAddr, prompt: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{gw}/v1/completions"))
        .json(&json!({"model": common::MODEL, "prompt": prompt, "max_tokens": 2}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn gateway_routes_through_an_epp_serving_tls_with_a_self_signed_certificate() {
    let pod = sim(&[]).await;
    let e = epp_tls(
        CONFIG,
        &[(pod, Role::Both)],
        Some(llmd_epp::TlsOptions::self_signed()),
    )
    .await;
    // The port speaks TLS with h2 by ALPN, and only TLS.
    let (cert, alpn) = handshake(e).await;
    assert!(!cert.is_empty());
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let plain = gateway(&["--epp", &format!("http://{e}"), "--epp-timeout-ms", "2000"]).await;
    let r = complete(plain, "plaintext to a TLS port").await;
    assert_eq!(r.status(), 503, "a plaintext client must not get through");

    // https:// --epp: TLS without verification routes to the pod.
    let gw = gateway(&["--epp", &format!("https://{e}")]).await;
    for i in 0..3 {
        let r = complete(gw, &format!("over TLS {i}")).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let seen = recorded(pod).await;
    assert_eq!(
        seen.iter()
            .filter(|r| r.to_string().contains("over TLS"))
            .count(),
        3
    );
    // Verifying against a CA that did not sign the self-signed certificate fails closed.
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = write_pair(dir.path(), "other");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca).unwrap();
    let strict = gateway(&[
        "--epp",
        &format!("https://{e}"),
        "--epp-ca-file",
        ca_file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(complete(strict, "unverifiable").await.status(), 503);
}

#[tokio::test]
async fn https_epp_url_to_a_plaintext_epp_fails() {
    let pod = sim(&[]).await;
    let e = epp(CONFIG, &[(pod, Role::Both)]).await;
    let gw = gateway(&["--epp", &format!("https://{e}"), "--epp-timeout-ms", "2000"]).await;
    assert_eq!(complete(gw, "tls to plaintext").await.status(), 503);
}

/// Writes a CA-signed `tls.crt`/`tls.key` for 127.0.0.1 into `dir` (the CA's common name
/// `name`); returns the CA certificate (PEM) and the leaf (DER).
fn write_pair(dir: &Path, name: &str) -> (String, Vec<u8>) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    // Key first: the reader sees a matching pair once the certificate lands.
    std::fs::write(dir.join("tls.key.new"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt.new"), leaf.pem()).unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    (ca.pem(), leaf.der().to_vec())
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections() {
    let pod = sim(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, leaf_a) = write_pair(dir.path(), "ca-a");
    let e = epp_tls(
        CONFIG,
        &[(pod, Role::Both)],
        Some(llmd_epp::TlsOptions {
            cert_path: Some(dir.path().to_owned()),
            reload_interval: Some(Duration::from_millis(50)),
        }),
    )
    .await;
    assert_eq!(handshake(e).await.0, leaf_a);
    // A gateway verifying against CA A routes.
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &ca_a).unwrap();
    let gw_a = gateway(&[
        "--epp",
        &format!("https://{e}"),
        "--epp-ca-file",
        ca_file.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(complete(gw_a, "before rotation").await.status(), 200);

    // Rotate to a pair from CA B (mtime must move: wait past a coarse clock tick).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (ca_b, leaf_b) = write_pair(dir.path(), "ca-b");
    let mut served = Vec::new();
    for _ in 0..200 {
        served = handshake(e).await.0;
        if served == leaf_b {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(served, leaf_b, "the rotated certificate was never served");
    // A new gateway verifying against CA B routes; one verifying against CA A cannot connect.
    let ca_b_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_b_file.path(), &ca_b).unwrap();
    let gw_b = gateway(&[
        "--epp",
        &format!("https://{e}"),
        "--epp-ca-file",
        ca_b_file.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(complete(gw_b, "after rotation").await.status(), 200);
    let gw_a_new = gateway(&[
        "--epp",
        &format!("https://{e}"),
        "--epp-ca-file",
        ca_file.path().to_str().unwrap(),
        "--epp-timeout-ms",
        "2000",
    ])
    .await;
    assert_eq!(complete(gw_a_new, "old CA").await.status(), 503);

    // A broken pair is refused and the current certificate kept.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handshake(e).await.0, leaf_b);
}

#[tokio::test]
async fn envoy_with_the_shipped_config_dials_a_tls_epp() {
    let Some(bin) = llmd_testkit::peers::envoy_bin() else {
        return;
    };
    let pod = sim(&[]).await;
    let e = epp_tls(
        CONFIG,
        &[(pod, Role::Both)],
        Some(llmd_epp::TlsOptions::self_signed()),
    )
    .await;
    let envoy = common::envoy_tls_to_epp(&bin, e).await;
    for i in 0..3 {
        let r = complete(envoy.addr, &format!("via envoy over TLS {i}")).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    assert_eq!(
        recorded(pod)
            .await
            .iter()
            .filter(|r| r.to_string().contains("via envoy over TLS"))
            .count(),
        3
    );
    // Envoy's own counters: the EPP cluster's connection was a TLS handshake.
    let stats = envoy.stats("cluster.epp.ssl.handshake").await;
    let handshakes: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cluster.epp.ssl.handshake: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(handshakes >= 1, "{stats}");
}

/// The cost of TLS on the ext_proc leg, printed (no assertion on time): per request over one
/// kept connection, and per new connection (TCP, h2 and, with TLS, the handshake, then one
/// request). Run: `cargo nextest run -p llmd-gateway --test epp_tls tls_cost --run-ignored
/// only --no-capture`.
#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn tls_cost() {
    use llmd_wire::ext_proc::{Client, RequestHead};
    const REQUESTS: usize = 2_000;
    const CONNECTIONS: usize = 200;
    let pod = sim(&[]).await;
    let plain = epp(CONFIG, &[(pod, Role::Both)]).await;
    let tls = epp_tls(
        CONFIG,
        &[(pod, Role::Both)],
        Some(llmd_epp::TlsOptions::self_signed()),
    )
    .await;
    let headers = http::HeaderMap::new();
    let head = RequestHead {
        method: "POST",
        path: "/v1/completions",
        authority: b"llmd",
        scheme: "http",
        headers: &headers,
    };
    let body = bytes::Bytes::from(
        json!({"model": common::MODEL, "prompt": "hello", "max_tokens": 1}).to_string(),
    );
    let timeout = Duration::from_secs(10);
    let mut results = Vec::new();
    for (name, uri) in [
        ("plaintext", format!("http://{plain}")),
        ("tls", format!("https://{tls}")),
    ] {
        let client = Client::connect_lazy(&uri, timeout).unwrap();
        for _ in 0..50 {
            client.request(&head, &body).await.unwrap();
        }
        let t = std::time::Instant::now();
        for _ in 0..REQUESTS {
            client.request(&head, &body).await.unwrap();
        }
        let per_request = t.elapsed() / REQUESTS as u32;
        let t = std::time::Instant::now();
        for _ in 0..CONNECTIONS {
            let fresh = Client::connect_lazy(&uri, timeout).unwrap();
            fresh.request(&head, &body).await.unwrap();
        }
        let per_connection = t.elapsed() / CONNECTIONS as u32;
        println!(
            "{name}: {per_request:?} per request over one connection, {per_connection:?} per new connection + first request"
        );
        results.push((per_request, per_connection));
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "tls/plaintext: per request {:.2}x, per new connection {:.2}x",
        ratio(results[1].0, results[0].0),
        ratio(results[1].1, results[0].1)
    );
}
