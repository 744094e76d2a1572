//! P/D as vLLM's NixlConnector does it, with a real network pull instead of RDMA.
//!
//! **Prefill leg** (`kv_transfer_params.do_remote_decode: true`): the prompt is computed, one
//! token emitted; when the request finishes by length (the proxy caps it at 1 token) the
//! response carries `kv_transfer_params` = `{do_remote_prefill: true, do_remote_decode: false,
//! remote_block_ids: [int...], remote_engine_id, remote_host, remote_port, tp_size,
//! remote_request_id}` and the prompt's blocks stay leased until the decode side pulls them or
//! `--kv-lease-seconds` pass (then `vllm:nixl_num_kv_expired_reqs_total`).
//!
//! **Decode leg** (`do_remote_prefill: true` with the remote fields): the sim asks the named
//! prefill sim for the blocks it does not hold locally (`POST /nixl/v1/pull` on
//! `remote_host:remote_port`), then takes `latency + bytes / bandwidth`, where bytes follow from
//! the model shape (2 × layers × KV heads × head dim × dtype bytes per token), and decodes. Each
//! TP rank records one observation of `vllm:nixl_xfer_time_seconds`, `..._post_time_seconds`,
//! `..._bytes_transferred` and `..._num_descriptors`. A failed pull (dead or wrong prefill,
//! unknown lease) counts in `vllm:nixl_num_failed_transfers_total` and, by default, fails the
//! request with 502; `--kv-transfer-failure recompute` computes the prompt locally instead, as
//! vLLM does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::config::NixlArgs;
use crate::engine::HeldBlocks;
use crate::metrics::EngineMetrics;

/// Blocks leased to a decode pod; dropping the lease gives them back to the pool.
struct Lease {
    blocks: HeldBlocks,
    engine_id: String,
    expires: Instant,
}

/// The P/D state of one sim.
pub struct Nixl {
    /// Flags.
    pub args: NixlArgs,
    /// This engine's id.
    pub engine_id: String,
    /// Advertised side channel.
    pub host: String,
    /// Advertised side-channel port.
    pub port: u16,
    leases: Mutex<HashMap<String, Lease>>,
    client: reqwest::Client,
    metrics: Arc<EngineMetrics>,
    time_scale: f64,
    /// Fault injection (dropped transfers).
    pub faults: Arc<crate::faults::Faults>,
}

impl std::fmt::Debug for Nixl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nixl")
            .field("engine_id", &self.engine_id)
            .field("leases", &self.leases.lock().len())
            .finish()
    }
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The request did not reach the prefill pod or timed out.
    #[error("KV transfer from {target} failed: {source}")]
    Unreachable {
        /// host:port.
        target: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The prefill pod refused (unknown or expired lease, engine id mismatch).
    #[error("KV transfer from {target} refused ({status}): {message}")]
    Refused {
        /// host:port.
        target: String,
        /// Status.
        status: u16,
        /// Its message.
        message: String,
    },
}

/// The remote fields of a decode request's `kv_transfer_params`.
#[derive(Debug, Clone)]
pub struct RemotePrefill {
    /// Block ids on the prefill pod.
    pub block_ids: Vec<u64>,
    /// Its engine id.
    pub engine_id: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Lease id.
    pub request_id: String,
}

impl RemotePrefill {
    /// Reads the remote fields; `None` when any is missing (vLLM then recomputes).
    pub fn from_params(p: &Value) -> Option<Self> {
        Some(Self {
            block_ids: p
                .get("remote_block_ids")?
                .as_array()?
                .iter()
                .map(Value::as_u64)
                .collect::<Option<Vec<_>>>()?,
            engine_id: p.get("remote_engine_id")?.as_str()?.to_owned(),
            host: p.get("remote_host")?.as_str()?.to_owned(),
            port: u16::try_from(p.get("remote_port")?.as_u64()?).ok()?,
            request_id: p
                .get("remote_request_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        })
    }
}

impl Nixl {
    /// P/D state for an engine advertised at `host:port`.
    pub fn new(
        args: NixlArgs,
        host: String,
        port: u16,
        metrics: Arc<EngineMetrics>,
        time_scale: f64,
        faults: Arc<crate::faults::Faults>,
    ) -> Arc<Self> {
        let engine_id = args
            .engine_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let host = args.nixl_side_channel_host.clone().unwrap_or(host);
        let port = args.nixl_side_channel_port.unwrap_or(port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(args.kv_transfer_timeout_ms))
            .build()
            .unwrap_or_default();
        let nixl = Arc::new(Self {
            args,
            engine_id,
            host,
            port,
            leases: Mutex::new(HashMap::new()),
            client,
            metrics,
            time_scale,
            faults,
        });
        tokio::spawn(expire_leases(Arc::downgrade(&nixl)));
        nixl
    }

    /// Leases a finished prefill's blocks; returns the `kv_transfer_params` for the response.
    /// A lease under the same request id replaces the older one, whose blocks go back.
    pub fn lease(&self, request_id: &str, blocks: HeldBlocks, tp_size: u64) -> Value {
        let ids: Vec<u64> = blocks.ids().iter().map(|b| u64::from(*b)).collect();
        let expires = Instant::now() + Duration::from_secs_f64(self.args.kv_lease_seconds.max(0.0));
        let replaced = self.leases.lock().insert(
            request_id.to_owned(),
            Lease {
                blocks,
                engine_id: self.engine_id.clone(),
                expires,
            },
        );
        if replaced.is_some() {
            tracing::warn!(
                request = request_id,
                "a second prefill with the same request id: the first one's KV lease is dropped"
            );
        }
        json!({
            "do_remote_prefill": true, "do_remote_decode": false, "remote_block_ids": ids,
            "remote_engine_id": self.engine_id, "remote_host": self.host, "remote_port": self.port,
            "tp_size": tp_size, "remote_request_id": request_id,
        })
    }

    /// Leases held now (prefill side).
    pub fn leases(&self) -> usize {
        self.leases.lock().len()
    }

    /// Decode side: pulls `needed_blocks` blocks of a remote prefill (0: a full local prefix
    /// hit, only the notification). Returns after the transfer, whose model time
    /// (`latency + bytes / bandwidth`) is slept scaled by `--time-scale`; records the NIXL
    /// metrics with the wall time measured: post time = the pull request's round trip, transfer
    /// time = from posting to the end of the transfer.
    pub async fn pull(
        &self,
        remote: &RemotePrefill,
        needed_blocks: u64,
        block_size: u64,
    ) -> Result<(), PullError> {
        let failed = || {
            if needed_blocks > 0 {
                self.metrics.nixl_failed.increment(1);
            } else {
                self.metrics.nixl_failed_notifications.increment(1);
            }
        };
        let target = format!("{}:{}", remote.host, remote.port);
        let started = Instant::now();
        let resp = self
            .client
            .post(format!("http://{target}/nixl/v1/pull"))
            .json(&json!({"remote_request_id": remote.request_id, "remote_engine_id": remote.engine_id, "remote_block_ids": remote.block_ids}))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(source) => {
                failed();
                return Err(PullError::Unreachable { target, source });
            }
        };
        if !resp.status().is_success() {
            failed();
            let status = resp.status().as_u16();
            let message = resp.text().await.unwrap_or_default();
            return Err(PullError::Refused {
                target,
                status,
                message,
            });
        }
        let post = started.elapsed().as_secs_f64();
        if needed_blocks == 0 {
            return Ok(());
        }
        let tp = self.args.tensor_parallel_size.max(1);
        let bytes = needed_blocks * block_size * self.args.bytes_per_token();
        let model_secs = self.args.transfer_seconds(bytes);
        if self.time_scale > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(model_secs * self.time_scale)).await;
        }
        let xfer = started.elapsed().as_secs_f64();
        for _ in 0..tp {
            self.metrics.nixl_xfer_time.record(xfer);
            self.metrics.nixl_post_time.record(post);
            self.metrics.nixl_bytes.record((bytes / tp) as f64);
            self.metrics
                .nixl_descriptors
                .record((needed_blocks * self.args.num_layers * 2) as f64);
        }
        Ok(())
    }
}

async fn expire_leases(nixl: std::sync::Weak<Nixl>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(nixl) = nixl.upgrade() else { break };
        let now = Instant::now();
        let expired = {
            let mut leases = nixl.leases.lock();
            let before = leases.len();
            leases.retain(|_, l| l.expires > now);
            before - leases.len()
        };
        // The dropped leases gave their blocks back.
        nixl.metrics.nixl_expired.increment(expired as u64);
    }
}

/// `POST /nixl/v1/pull`: the decode side takes a lease's blocks (the stand-in for NIXL's read
/// plus its completion notification).
pub async fn pull_endpoint(State(nixl): State<Arc<Nixl>>, body: axum::body::Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON").into_response();
    };
    if nixl.faults.drop_kv() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "KV transfer dropped (fault injection)",
        )
            .into_response();
    }
    let id = req["remote_request_id"].as_str().unwrap_or_default();
    let engine_id = req["remote_engine_id"].as_str().unwrap_or_default();
    let mut leases = nixl.leases.lock();
    match leases.get(id) {
        None => (
            StatusCode::NOT_FOUND,
            format!("no KV lease for request {id:?} (never prefilled here, or expired)"),
        )
            .into_response(),
        Some(l) if l.engine_id != engine_id => (
            StatusCode::CONFLICT,
            format!(
                "engine id {engine_id:?} is not this engine ({})",
                l.engine_id
            ),
        )
            .into_response(),
        Some(_) => {
            let lease = leases.remove(id);
            drop(leases);
            // Dropping the lease gives its blocks back.
            let n = lease.map(|l| l.blocks.ids().len()).unwrap_or_default();
            axum::Json(json!({"blocks": n})).into_response()
        }
    }
}
