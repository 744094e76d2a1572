//! The listener's timeouts (issue 14): connections that trickle their headers (slowloris), that
//! send nothing, and idle HTTP/2 connections are closed, while normal traffic (including a
//! stream that outlives both timeouts) is not affected.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{MODEL, epp, gateway, metric, silent_upstream, sim};
use llmd_epp::config::ROUND_ROBIN_CONFIG;
use llmd_epp::endpoints::Role;
use llmd_telemetry::names::gateway as m;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const SLOW: usize = 200;

/// Resolves when the server closes `read` (EOF or reset); `Err` if it sent anything else.
async fn closed_by_server(mut read: impl AsyncReadExt + Unpin) -> Result<(), String> {
    let mut buf = [0u8; 1024];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => {
                // An HTTP/2 server says GOAWAY before closing; anything for HTTP/1 is wrong.
                if buf[..n].starts_with(b"HTTP/") && !buf[..n].starts_with(b"HTTP/1.1 408") {
                    return Err(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        }
    }
}

/// A client that sends a request's headers one byte every 100 ms, forever.
async fn slowloris(gw: SocketAddr) -> Result<(), String> {
    let s = TcpStream::connect(gw).await.unwrap();
    let (read, mut write) = s.into_split();
    tokio::spawn(async move {
        let head =
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
        for b in head.iter().cycle() {
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    closed_by_server(read).await
}

/// A client that connects and sends nothing.
async fn silent(gw: SocketAddr) -> Result<(), String> {
    let s = TcpStream::connect(gw).await.unwrap();
    closed_by_server(s).await
}

/// An HTTP/2 client (prior knowledge) that opens its connection and then sends nothing.
async fn idle_h2(gw: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(gw).await.unwrap();
    // The preface and an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    closed_by_server(s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_normal_traffic_is_not() {
    common::metrics();
    let pod = sim(&[]).await;
    let slow_pod = silent_upstream(Duration::from_millis(1500)).await;
    let epp = epp(ROUND_ROBIN_CONFIG, &[(pod, Role::Both)]).await;
    let slow_epp = epp_for(slow_pod).await;
    let flags = |epp: SocketAddr| {
        vec![
            "--epp".to_owned(),
            format!("http://{epp}"),
            "--header-read-timeout-ms".into(),
            "500".into(),
            "--idle-timeout-ms".into(),
            "500".into(),
        ]
    };
    let gw = gateway(&as_strs(&flags(epp))).await;
    let slow_gw = gateway(&as_strs(&flags(slow_epp))).await;

    let mut bad = JoinSet::new();
    for i in 0..SLOW {
        match i % 3 {
            0 => bad.spawn(slowloris(gw)),
            1 => bad.spawn(silent(gw)),
            _ => bad.spawn(idle_h2(gw)),
        };
    }

    // Meanwhile, normal requests, and a stream longer than both timeouts, all succeed.
    let http = reqwest::Client::new();
    let streamed = http
        .post(format!("http://{slow_gw}/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "p", "max_tokens": 2, "stream": true}))
        .send();
    let normal = async {
        for i in 0..20 {
            let r = http
                .post(format!("http://{gw}/v1/completions"))
                .json(&json!({"model": MODEL, "prompt": format!("normal {i}"), "max_tokens": 3}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (streamed, ()) = tokio::join!(streamed, normal);
    let text = streamed.unwrap().text().await.unwrap();
    assert!(text.contains("after the pause"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Every slow or idle connection was closed by the gateway (the bound is generous: the
    // timeouts are 500 ms).
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        let mut n = 0;
        while let Some(r) = bad.join_next().await {
            r.unwrap().unwrap();
            n += 1;
        }
        n
    })
    .await
    .expect("slow or idle connections still open after 30 s");
    assert_eq!(all, SLOW);
    let closed = metric(
        m::CONNECTIONS_CLOSED_TOTAL.name,
        &[("reason", "header_read_timeout")],
    );
    // Each counted once; the test client's two idle keep-alive connections may be closed by
    // now too (an idle HTTP/1.1 connection waits under the header-read timeout).
    assert!(
        (SLOW as f64..=SLOW as f64 + 2.0).contains(&closed),
        "{closed}"
    );

    // A keep-alive connection that goes idle after its request is closed too.
    let mut s = TcpStream::connect(gw).await.unwrap();
    let body = json!({"model": MODEL, "prompt": "once", "max_tokens": 1}).to_string();
    s.write_all(
        format!(
            "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("an idle keep-alive connection still open after 30 s");
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

async fn epp_for(pod: SocketAddr) -> SocketAddr {
    epp(ROUND_ROBIN_CONFIG, &[(pod, Role::Both)]).await
}
