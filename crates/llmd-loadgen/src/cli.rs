//! The `llmd loadgen` / `llmd-loadgen` command line: subcommands, the target and its
//! datasets, and how flags become a [`crate::runner::Plan`], a client and a report.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use llmd_telemetry::TelemetryArgs;
use rand::SeedableRng;
use serde_json::{Value, json};

use crate::client::{Api, Client, ClientOptions, Outcome};
use crate::dataset::{Dataset, Lengths, PromptMaker};
use crate::runner::{Load, Plan};
use crate::stats::Report;
use crate::{Error, config_err, html};

/// Command-line flags of `llmd-loadgen` (also `llmd loadgen`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "llmd-loadgen",
    version,
    about = "Load generator: P/D traffic patterns, open-loop rates, client-side TTFT/TPOT/ITL, reports"
)]
pub struct Args {
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// A load run: a rate mode, a dataset, a bound; prints a summary, writes reports.
    Run(Box<RunArgs>),
    /// The llm-d P/D demo's load: WORKERS workers with distinct patterns for MINUTES.
    PdConcurrent(Box<PdArgs>),
    /// Saved reports (--output) side by side.
    Report {
        /// Report files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Where requests go.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Base URL with the API prefix.
    #[arg(long, env = "ENDPOINT", default_value = "http://localhost:8000/v1")]
    pub endpoint: String,
    /// `model` of every request.
    #[arg(
        long,
        env = "MODEL_NAME",
        default_value = "meta-llama/Llama-3.1-8B-Instruct"
    )]
    pub model: String,
    /// Tokenizer for prompt lengths: a model name or directory (default: --model's, from the
    /// Hugging Face cache), or `bytes` for servers with a byte tokenizer (`llmd sim
    /// --dummy-tokenizer`).
    #[arg(long, env = "LLMD_LOADGEN_TOKENIZER")]
    pub tokenizer: Option<String>,
    /// Whole-request timeout, seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout_s: f64,
    /// Skip the `GET /models` check before starting.
    #[arg(long)]
    pub no_preflight: bool,
    /// Write the report JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write every request's measurements here (JSON lines).
    #[arg(long)]
    pub output_requests: Option<PathBuf>,
    /// Write a self-contained HTML report (summary, latency histograms, time series) here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The `service.name` of the client spans when the load generator shares a process with
    /// other components (`llmd demo`); alone, the process's own names them.
    #[arg(long)]
    pub span_service_name: Option<String>,
    /// An extra request header, `NAME: VALUE` (repeatable), e.g. `x-prefiller-host-port:
    /// 10.0.0.5:8000` to drive a P/D sidecar directly.
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// `NAME: VALUE`.
fn parse_header(raw: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| format!("{raw:?} is not NAME: VALUE"))?;
    let name = http::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|e| format!("header name {name:?}: {e}"))?;
    let value = http::HeaderValue::from_str(value.trim())
        .map_err(|e| format!("header value {value:?}: {e}"))?;
    Ok((name, value))
}

/// Rate modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadMode {
    /// Evenly spaced at --rate.
    Constant,
    /// Poisson arrivals at --rate.
    Poisson,
    /// Gamma gaps at --rate with shape --burstiness.
    Gamma,
    /// --concurrency requests in flight (closed loop).
    Concurrency,
    /// At the trace's timestamps (--dataset trace).
    Trace,
}

/// Datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetKind {
    /// Random prompts of --input-tokens, --output-tokens.
    Synthetic,
    /// --prefix-groups prefixes of --prefix-tokens, each with --prompts-per-group suffixes.
    SharedPrefix,
    /// A ShareGPT JSON file (--dataset-path).
    Sharegpt,
    /// A Mooncake-format JSONL trace (--dataset-path).
    Trace,
}

/// Flags of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Target.
    #[command(flatten)]
    pub target: Target,
    /// API.
    #[arg(long, value_enum, default_value = "completions")]
    pub api: Api,
    /// Streaming requests (TTFT, ITL and TPOT need it).
    #[arg(long)]
    pub stream: bool,
    /// Rate mode.
    #[arg(long, value_enum, default_value = "poisson")]
    pub load: LoadMode,
    /// Requests per second (constant, poisson, gamma).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Gamma shape (1 = Poisson; < 1 burstier).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Requests in flight (--load concurrency).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Stop sending after this many seconds (warm-up included).
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Stop after this many requests (warm-up included).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Requests scheduled in the first seconds are sent but not counted.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_s: f64,
    /// Objectives of goodput: `ttft=200,tpot=50,e2e=10000` (ms).
    #[arg(long)]
    pub slo: Option<String>,
    /// Dataset.
    #[arg(long, value_enum, default_value = "synthetic")]
    pub dataset: DatasetKind,
    /// File of --dataset sharegpt or trace.
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    /// Prompt tokens: N, MIN-MAX or MEAN+-STD.
    #[arg(long, default_value = "512")]
    pub input_tokens: String,
    /// Output tokens (max_tokens): N, MIN-MAX or MEAN+-STD.
    #[arg(long, default_value = "128")]
    pub output_tokens: String,
    /// Shared-prefix groups.
    #[arg(long, default_value_t = 8)]
    pub prefix_groups: u32,
    /// Tokens of each shared prefix.
    #[arg(long, default_value_t = 2048)]
    pub prefix_tokens: u32,
    /// Prompts per shared-prefix group.
    #[arg(long, default_value_t = 16)]
    pub prompts_per_group: u32,
    /// Tokens of each suffix after the shared prefix.
    #[arg(long, default_value_t = 128)]
    pub suffix_tokens: u32,
    /// Trace replay speed-up (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub trace_speedup: f64,
    /// Tokens per hash id of a Mooncake trace.
    #[arg(long, default_value_t = 512)]
    pub trace_block_tokens: u32,
    /// At most this many dataset entries are read.
    #[arg(long, default_value_t = 100_000)]
    pub dataset_limit: usize,
    /// Extra request fields as JSON (`{"temperature": 0, "ignore_eos": true}`).
    #[arg(long)]
    pub extra_body: Option<String>,
    /// Find the highest rate that meets --slo: `auto` (double from --rate, then bisect) or a
    /// list of rates (`50,100,200`). Each stage runs --duration-s / --requests.
    #[arg(long)]
    pub sweep: Option<String>,
    /// Share of requests that must meet --slo for a sweep stage to pass.
    #[arg(long, default_value_t = 0.9)]
    pub slo_attainment: f64,
}

/// Flags of `pd-concurrent`.
#[derive(Debug, Clone, clap::Args)]
pub struct PdArgs {
    /// Workers.
    #[arg(default_value_t = 6)]
    pub workers: usize,
    /// Minutes.
    #[arg(default_value_t = 5.0)]
    pub minutes: f64,
    /// Target.
    #[command(flatten)]
    pub target: Target,
    /// Multiplies every pause of the patterns (1 = the demo's pacing).
    #[arg(long, default_value_t = 1.0)]
    pub pace: f64,
    /// No line per request.
    #[arg(long)]
    pub no_lines: bool,
}

impl Target {
    pub(crate) fn maker(&self) -> Result<PromptMaker, Error> {
        match self.tokenizer.as_deref() {
            Some("bytes") => Ok(PromptMaker::Bytes),
            Some(t) => Ok(PromptMaker::load(Some(t))?),
            None => PromptMaker::load(Some(&self.model)).map_err(|e| {
                Error::Config(format!(
                    "{e}; give --tokenizer NAME|DIR, or --tokenizer bytes for a byte-tokenizer server"
                ))
            }),
        }
    }

    pub(crate) fn client(
        &self,
        api: Api,
        extra: serde_json::Map<String, Value>,
    ) -> Result<Client, Error> {
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            return Err(config_err("--timeout-s must be > 0"));
        }
        Ok(Client::new(ClientOptions {
            endpoint: self.endpoint.clone(),
            model: self.model.clone(),
            api,
            timeout: Duration::from_secs_f64(self.timeout_s),
            extra,
            service_name: self.span_service_name.clone(),
            headers: self.headers.clone(),
        })?)
    }

    pub(crate) async fn preflight(&self, client: &Client) -> Result<(), Error> {
        if self.no_preflight {
            return Ok(());
        }
        client.preflight().await.map_err(Error::Preflight)
    }

    pub(crate) fn write(&self, report: &Report, outcomes: &[Outcome]) -> Result<(), Error> {
        if let Some(path) = &self.output {
            let io = |source| Error::Io {
                path: path.display().to_string(),
                source,
            };
            let text = serde_json::to_vec_pretty(report).map_err(|e| io(e.into()))?;
            std::fs::write(path, text).map_err(io)?;
        }
        if let Some(path) = &self.output_requests {
            let io = |source| Error::Io {
                path: path.display().to_string(),
                source,
            };
            let file = std::fs::File::create(path).map_err(io)?;
            let mut w = std::io::BufWriter::new(file);
            for o in outcomes {
                serde_json::to_writer(&mut w, o).map_err(|e| io(e.into()))?;
                w.write_all(b"\n").map_err(io)?;
            }
            w.flush().map_err(io)?;
        }
        if let Some(path) = &self.html {
            std::fs::write(path, html::page(report, outcomes)).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }
}

impl RunArgs {
    /// The plan these flags describe.
    pub fn plan(&self) -> Result<Plan, Error> {
        let need_rate = || {
            self.rate
                .filter(|r| *r > 0.0 && r.is_finite())
                .ok_or_else(|| config_err("this --load needs --rate > 0"))
        };
        let load = match self.load {
            LoadMode::Constant => Load::Constant { rate: need_rate()? },
            LoadMode::Poisson => Load::Poisson { rate: need_rate()? },
            LoadMode::Gamma => Load::Gamma {
                rate: need_rate()?,
                burstiness: self.burstiness,
            },
            LoadMode::Concurrency => Load::Concurrency {
                n: self
                    .concurrency
                    .filter(|n| *n > 0)
                    .ok_or_else(|| config_err("--load concurrency needs --concurrency > 0"))?,
            },
            LoadMode::Trace => {
                if self.dataset != DatasetKind::Trace {
                    return Err(config_err("--load trace needs --dataset trace"));
                }
                Load::Trace
            }
        };
        let secs = |x: f64, what: &str| {
            if x >= 0.0 && x.is_finite() {
                Ok(Duration::from_secs_f64(x))
            } else {
                Err(config_err(format!("{what} must be >= 0")))
            }
        };
        let duration = self
            .duration_s
            .map(|d| secs(d, "--duration-s"))
            .transpose()?;
        if duration.is_none() && self.requests.is_none() && self.dataset != DatasetKind::Trace {
            return Err(config_err("give --duration-s, --requests, or both"));
        }
        Ok(Plan {
            load,
            duration,
            max_requests: self.requests,
            warmup: secs(self.warmup_s, "--warmup-s")?,
            stream: self.stream,
            seed: self.target.seed,
        })
    }

    pub(crate) fn dataset(&self, maker: &PromptMaker) -> Result<Dataset, Error> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(self.target.seed);
        let path = || {
            self.dataset_path
                .clone()
                .ok_or_else(|| config_err("this --dataset needs --dataset-path"))
        };
        Ok(match self.dataset {
            DatasetKind::Synthetic => Dataset::Synthetic {
                input: Lengths::parse(&self.input_tokens).map_err(config_err)?,
                output: Lengths::parse(&self.output_tokens).map_err(config_err)?,
                maker: maker.clone(),
            },
            DatasetKind::SharedPrefix => {
                let output = match Lengths::parse(&self.output_tokens).map_err(config_err)? {
                    Lengths::Fixed { n } => n,
                    _ => {
                        return Err(config_err(
                            "--dataset shared-prefix takes a fixed --output-tokens",
                        ));
                    }
                };
                Dataset::shared_prefix(
                    maker,
                    self.prefix_groups,
                    self.prompts_per_group,
                    self.prefix_tokens,
                    self.suffix_tokens,
                    output,
                    &mut rng,
                )?
            }
            DatasetKind::Sharegpt => Dataset::sharegpt(&path()?, maker, self.dataset_limit)?,
            DatasetKind::Trace => Dataset::mooncake(
                &path()?,
                maker,
                self.trace_block_tokens,
                self.trace_speedup,
                self.dataset_limit,
            )?,
        })
    }

    pub(crate) fn config(&self) -> Value {
        json!({
            "command": "run",
            "endpoint": self.target.endpoint, "model": self.target.model,
            "tokenizer": self.target.tokenizer, "api": self.api, "stream": self.stream,
            "load": format!("{:?}", self.load).to_lowercase(), "rate": self.rate,
            "burstiness": self.burstiness, "concurrency": self.concurrency,
            "duration_s": self.duration_s, "requests": self.requests, "warmup_s": self.warmup_s,
            "slo": self.slo, "dataset": format!("{:?}", self.dataset).to_lowercase(),
            "dataset_path": self.dataset_path, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "prefix_groups": self.prefix_groups,
            "prefix_tokens": self.prefix_tokens, "prompts_per_group": self.prompts_per_group,
            "suffix_tokens": self.suffix_tokens, "trace_speedup": self.trace_speedup,
            "seed": self.target.seed, "extra_body": self.extra_body,
        })
    }
}
