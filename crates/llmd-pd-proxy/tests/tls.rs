//! TLS, off by default: the proxy's HTTPS listener (HTTP/1.1 and h2 by ALPN, certificate
//! rotation), HTTPS to the prefill and decode engines with verification against a private CA,
//! and the real Python `openai` client over HTTPS end to end. The engines are simulators behind
//! TLS-terminating pass-through proxies (the proxy's own listener, so both sides are real).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const SIM: &[&str] = &["--dummy-tokenizer", "--time-scale", "0", "--mode", "echo"];

/// A CA and a server certificate for 127.0.0.1/localhost written as `dir/tls.{crt,key}`;
/// returns the CA's PEM path.
fn issue(dir: &Path, ca_name: &str) -> PathBuf {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("tls.crt"), leaf.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    let ca_path = dir.join(format!("{ca_name}.pem"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    ca_path
}

/// Starts a proxy from flags; returns its address and its configuration (for the cert reload).
async fn proxy(flags: &[&str]) -> (SocketAddr, llmd_pd_proxy::Config) {
    let mut flags = flags.to_vec();
    if !flags
        .iter()
        .any(|f| f.starts_with("--cert-path") || f.starts_with("--secure-proxy"))
    {
        flags.push("--secure-proxy=false");
    }
    let args = llmd_pd_proxy::Args::parse_from(
        std::iter::once("llmd-pd-proxy").chain(flags.iter().copied()),
    );
    let config = args.config().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = llmd_pd_proxy::start(config.clone(), listener, None, CancellationToken::new())
        .await
        .unwrap()
        .addr;
    (addr, config)
}

/// An HTTPS client trusting only `ca` (HTTP/1.1 or h2 by ALPN).
fn https_client(
    ca: &Path,
    h2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let tls = llmd_pd_proxy::tls::client_config(Some(ca), false).unwrap();
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1();
    let connector = if h2 {
        b.enable_http2().build()
    } else {
        b.build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn post(
    client: &Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    url: &str,
    prefill: Option<&str>,
) -> Result<(http::StatusCode, http::Version, Value), String> {
    let body =
        json!({"model": MODEL, "prompt": "TLS all the way through the proxy", "max_tokens": 5});
    let mut req = http::Request::post(url).header("content-type", "application/json");
    if let Some(p) = prefill {
        req = req.header("x-prefiller-host-port", p);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (status, version) = (resp.status(), resp.version());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, version, serde_json::from_slice(&bytes).unwrap()))
}

/// The echo simulator's answer text.
fn text(v: &Value) -> &str {
    v["choices"][0]["text"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_and_verified_tls_to_both_engines() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let ca = issue(&certs, "ca-one");
    let certs_s = certs.to_str().unwrap();
    let ca_s = ca.to_str().unwrap();

    let prefill_sim = common::sim(
        &[SIM, &["--role", "prefill", "--record-requests", "8"]].concat(),
        None,
    )
    .await;
    let decode_sim = common::sim(&[SIM, &["--role", "decode"]].concat(), None).await;
    // TLS terminators in front of each engine: the proxy's HTTPS listener in pass-through.
    let (prefill_tls, _) = proxy(&[
        "--cert-path",
        certs_s,
        "--decoder",
        &format!("http://{prefill_sim}"),
    ])
    .await;
    let (decode_tls, _) = proxy(&[
        "--cert-path",
        certs_s,
        "--decoder",
        &format!("http://{decode_sim}"),
    ])
    .await;

    let (front, _) = proxy(&[
        "--cert-path",
        certs_s,
        "--decoder",
        &format!("http://{decode_tls}"),
        "--enable-tls",
        "prefiller,decoder",
        "--tls-ca-file",
        ca_s,
        "--allow-prefill",
        "127.0.0.1",
    ])
    .await;
    let client = https_client(&ca, false);
    let url = format!("https://{front}/v1/completions");
    let target = prefill_tls.to_string();

    // P/D over TLS on every hop equals the same request straight at the decode engine.
    let (status, version, pd) = post(&client, &url, Some(&target)).await.unwrap();
    assert_eq!(status, 200, "{pd}");
    assert_eq!(version, http::Version::HTTP_11);
    let direct: Value = reqwest::Client::new()
        .post(format!("http://{decode_sim}/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "TLS all the way through the proxy", "max_tokens": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(text(&pd), text(&direct));
    assert!(pd["kv_transfer_params"].is_null() || pd.get("kv_transfer_params").is_none());
    // The prefill engine got the nixlv2 prefill body through the TLS hop.
    let seen: Value = reqwest::get(format!("http://{prefill_sim}/debug/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen = seen.as_array().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["body"]["max_tokens"], 1);
    assert_eq!(
        seen[0]["body"]["kv_transfer_params"]["do_remote_decode"],
        true
    );

    // h2 is offered by ALPN on the listener.
    let (status, version, _) = post(&https_client(&ca, true), &url, None).await.unwrap();
    assert_eq!(
        (status, version),
        (http::StatusCode::OK, http::Version::HTTP_2)
    );

    // Plain HTTP at the HTTPS listener fails the handshake and loses nothing.
    let plain = reqwest::Client::new()
        .get(format!("http://{front}/health"))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() == 400);
    let (status, _, _) = post(&client, &url, None).await.unwrap();
    assert_eq!(status, 200);

    // An engine certificate from another CA is refused: the prefill leg fails with 502 and
    // the message names the certificate problem.
    let other = tmp.path().join("other");
    let _ = issue(&other, "ca-two");
    let (rogue_prefill, _) = proxy(&[
        "--cert-path",
        other.to_str().unwrap(),
        "--decoder",
        &format!("http://{prefill_sim}"),
    ])
    .await;
    let (status, _, err) = post(&client, &url, Some(&rogue_prefill.to_string()))
        .await
        .unwrap();
    assert_eq!(status, 502, "{err}");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("certificate") || msg.contains("Certificate"),
        "{msg}"
    );

    // ... unless verification is skipped for that leg (development only).
    let (lax, _) = proxy(&[
        "--decoder",
        &format!("http://{decode_sim}"),
        "--enable-tls",
        "prefiller",
        "--tls-insecure-skip-verify",
        "prefiller",
        "--allow-prefill",
        "127.0.0.1",
    ])
    .await;
    let r: Value = reqwest::Client::new()
        .post(format!("http://{lax}/v1/completions"))
        .header("x-prefiller-host-port", rogue_prefill.to_string())
        .json(&json!({"model": MODEL, "prompt": "TLS all the way through the proxy", "max_tokens": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(text(&r), text(&direct));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_and_a_broken_one_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let ca1 = issue(&dir, "ca-one");
    let sim = common::sim(&[SIM, &["--role", "decode"]].concat(), None).await;
    let (addr, config) = proxy(&[
        "--cert-path",
        dir.to_str().unwrap(),
        "--decoder",
        &format!("http://{sim}"),
    ])
    .await;
    let certs = config.server_tls.clone().unwrap();
    let url = format!("https://{addr}/v1/completions");
    assert_eq!(
        post(&https_client(&ca1, false), &url, None)
            .await
            .unwrap()
            .0,
        200
    );

    // cert-manager writes a new pair from another CA in place.
    let ca2 = issue(&dir, "ca-two");
    assert!(certs.reload_if_changed());
    assert_eq!(
        post(&https_client(&ca2, false), &url, None)
            .await
            .unwrap()
            .0,
        200
    );
    let refused = post(&https_client(&ca1, false), &url, None).await;
    assert!(refused.is_err(), "the old CA must no longer verify");

    // A half-written pair (key of another certificate) is refused; the last good one stays.
    let stray = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.join("tls.key"), stray.serialize_pem()).unwrap();
    assert!(!certs.reload_if_changed());
    assert_eq!(
        post(&https_client(&ca2, false), &url, None)
            .await
            .unwrap()
            .0,
        200
    );

    // Startup with unusable files is a clear error, not a panic.
    std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
    let err = llmd_pd_proxy::Args::parse_from(["p", "--cert-path", dir.to_str().unwrap()])
        .config()
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls.crt"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_over_https() {
    let Some(python) = llmd_testkit::peers::python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let ca = issue(&certs, "ca-one");
    let p = common::pair(
        &[SIM, &["--block-size", "16"]].concat(),
        &[],
        &["--cert-path", certs.to_str().unwrap()],
        None,
    )
    .await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_pd.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(format!("https://localhost:{}", p.proxy.port()))
        .arg(format!("http://{}", p.decode))
        .arg(p.prefill.to_string())
        .arg(MODEL)
        .arg(&ca)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "text",
        "stream_text",
        "stream_events",
        "chat",
        "chat_stream",
    ] {
        assert_eq!(v["pd"][key], v["direct"][key], "{key}");
    }
    assert_eq!(v["pd"]["usage"]["completion_tokens"], 8);
    assert_eq!(v["denied"], 403);
}
