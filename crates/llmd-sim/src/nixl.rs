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

use crate::block_pool::BlockId;
use crate::engine::Engine;
use crate::metrics::EngineMetrics;

/// What a failed KV pull does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TransferFailure {
    /// Fail the request with 502 (makes dead or wrong prefill pods visible).
    #[default]
    Error,
    /// Compute the prompt locally, as vLLM does.
    Recompute,
}

/// NIXL and model-shape flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NixlArgs {
    /// Engine id (`remote_engine_id`); default: random.
    #[arg(long)]
    pub engine_id: Option<String>,
    /// Host decode pods pull from (vLLM's VLLM_NIXL_SIDE_CHANNEL_HOST); default POD_IP or the
    /// listen address.
    #[arg(long)]
    pub nixl_side_channel_host: Option<String>,
    /// Port decode pods pull from; default the API port (the pull endpoint lives there).
    #[arg(long)]
    pub nixl_side_channel_port: Option<u16>,
    /// Model layers.
    #[arg(long, default_value_t = 32)]
    pub num_layers: u64,
    /// KV heads.
    #[arg(long, default_value_t = 8)]
    pub num_kv_heads: u64,
    /// Head dimension.
    #[arg(long, default_value_t = 128)]
    pub head_dim: u64,
    /// Bytes per KV element (2 for bf16, 1 for fp8).
    #[arg(long, default_value_t = 2)]
    pub kv_dtype_bytes: u64,
    /// Tensor-parallel size (KV heads split across ranks; one observation per rank).
    #[arg(long, default_value_t = 1)]
    pub tensor_parallel_size: u64,
    /// Fixed cost of one KV transfer, ms.
    #[arg(long, default_value_t = 1.0)]
    pub kv_transfer_latency_ms: f64,
    /// KV transfer bandwidth, GB/s (RDMA over a 200-400 Gb/s NIC: ~25 GB/s).
    #[arg(long, default_value_t = 25.0)]
    pub kv_transfer_bandwidth_gbps: f64,
    /// How long a prefill keeps leased blocks for the decode side, seconds (vLLM: 480).
    #[arg(long, default_value_t = 480.0)]
    pub kv_lease_seconds: f64,
    /// What a failed pull does.
    #[arg(long, value_enum, default_value_t = TransferFailure::Error)]
    pub kv_transfer_failure: TransferFailure,
    /// Timeout of the pull call, ms.
    #[arg(long, default_value_t = 5000)]
    pub kv_transfer_timeout_ms: u64,
}

impl NixlArgs {
    /// KV bytes per token over all TP ranks.
    pub fn bytes_per_token(&self) -> u64 {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes
    }
}

struct Lease {
    blocks: Vec<BlockId>,
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
    engine: Engine,
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
        engine: Engine,
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
            engine,
            metrics,
            time_scale,
            faults,
        });
        tokio::spawn(expire_leases(Arc::downgrade(&nixl)));
        nixl
    }

    /// Leases a finished prefill's blocks; returns the `kv_transfer_params` for the response.
    pub fn lease(&self, request_id: &str, blocks: Vec<BlockId>, tp_size: u64) -> Value {
        let ids: Vec<u64> = blocks.iter().map(|b| u64::from(*b)).collect();
        let expires = Instant::now() + Duration::from_secs_f64(self.args.kv_lease_seconds.max(0.0));
        self.leases.lock().insert(
            request_id.to_owned(),
            Lease {
                blocks,
                engine_id: self.engine_id.clone(),
                expires,
            },
        );
        json!({
            "do_remote_prefill": true, "do_remote_decode": false, "remote_block_ids": ids,
            "remote_engine_id": self.engine_id, "remote_host": self.host, "remote_port": self.port,
            "tp_size": tp_size, "remote_request_id": request_id,
        })
    }

    /// Decode side: pulls `needed` blocks of a remote prefill. Returns after the simulated
    /// transfer time; records the NIXL metrics.
    pub async fn pull(
        &self,
        remote: &RemotePrefill,
        needed_blocks: u64,
        block_size: u64,
    ) -> Result<(), PullError> {
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
                self.metrics.nixl_failed.increment(1);
                return Err(PullError::Unreachable { target, source });
            }
        };
        if !resp.status().is_success() {
            self.metrics.nixl_failed.increment(1);
            let status = resp.status().as_u16();
            let message = resp.text().await.unwrap_or_default();
            return Err(PullError::Refused {
                target,
                status,
                message,
            });
        }
        let post = started.elapsed().as_secs_f64();
        let tp = self.args.tensor_parallel_size.max(1);
        let bytes = needed_blocks * block_size * self.args.bytes_per_token();
        let secs = self.args.kv_transfer_latency_ms / 1e3
            + bytes as f64 / (self.args.kv_transfer_bandwidth_gbps.max(1e-6) * 1e9);
        if self.time_scale > 0.0 && needed_blocks > 0 {
            tokio::time::sleep(Duration::from_secs_f64(secs * self.time_scale)).await;
        }
        if needed_blocks > 0 {
            for _ in 0..tp {
                self.metrics.nixl_xfer_time.record(secs);
                self.metrics.nixl_post_time.record(post);
                self.metrics.nixl_bytes.record((bytes / tp) as f64);
                self.metrics
                    .nixl_descriptors
                    .record((needed_blocks * self.args.num_layers * 2) as f64);
            }
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
        let expired: Vec<Lease> = {
            let mut leases = nixl.leases.lock();
            let ids: Vec<String> = leases
                .iter()
                .filter(|(_, l)| l.expires <= now)
                .map(|(k, _)| k.clone())
                .collect();
            ids.iter().filter_map(|id| leases.remove(id)).collect()
        };
        for lease in expired {
            nixl.metrics.nixl_expired.increment(1);
            nixl.engine.release(lease.blocks);
        }
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
            let blocks = lease.map(|l| l.blocks).unwrap_or_default();
            let n = blocks.len();
            nixl.engine.release(blocks);
            axum::Json(json!({"blocks": n})).into_response()
        }
    }
}
