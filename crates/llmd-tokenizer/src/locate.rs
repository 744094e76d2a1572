//! Finding tokenizer files: a local path, or the HuggingFace cache layout.

use std::path::{Path, PathBuf};

use super::TokenizerError;

/// The files a [`super::ModelTokenizer`] loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerFiles {
    /// `tokenizer.json`.
    pub tokenizer_json: PathBuf,
    /// `tokenizer_config.json` (chat template, special tokens), when present.
    pub tokenizer_config: Option<PathBuf>,
}

impl TokenizerFiles {
    fn in_dir(dir: &Path) -> Option<Self> {
        let tokenizer_json = dir.join("tokenizer.json");
        tokenizer_json.is_file().then(|| {
            let config = dir.join("tokenizer_config.json");
            Self {
                tokenizer_json,
                tokenizer_config: config.is_file().then_some(config),
            }
        })
    }
}

/// The HF hub cache directory: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hf_hub_cache() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// Finds the tokenizer of `model`: a directory holding `tokenizer.json`, a path to a
/// `tokenizer.json`, or a model name (`org/name`) in the HF cache (`hub` overrides the cache
/// directory).
pub fn locate(model: &str, hub: Option<&Path>) -> Result<TokenizerFiles, TokenizerError> {
    let mut searched = Vec::new();
    let path = Path::new(model);
    if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = dir.join("tokenizer_config.json");
        return Ok(TokenizerFiles {
            tokenizer_json: path.to_owned(),
            tokenizer_config: config.is_file().then_some(config),
        });
    }
    if path.is_dir() {
        if let Some(files) = TokenizerFiles::in_dir(path) {
            return Ok(files);
        }
        searched.push(path.display().to_string());
    }
    if let Some(hub) = hub.map(Path::to_owned).or_else(hf_hub_cache) {
        let repo = hub.join(format!("models--{}", model.replace('/', "--")));
        // The revision `refs/main` points at, then any snapshot that has the files.
        let main = std::fs::read_to_string(repo.join("refs/main"))
            .ok()
            .map(|r| r.trim().to_owned());
        if let Some(files) =
            main.and_then(|rev| TokenizerFiles::in_dir(&repo.join("snapshots").join(rev)))
        {
            return Ok(files);
        }
        let mut snapshots: Vec<PathBuf> = std::fs::read_dir(repo.join("snapshots"))
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        snapshots.sort();
        if let Some(files) = snapshots
            .iter()
            .rev()
            .find_map(|s| TokenizerFiles::in_dir(s))
        {
            return Ok(files);
        }
        searched.push(repo.display().to_string());
    }
    Err(TokenizerError::NotFound {
        model: model.to_owned(),
        searched: searched.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_local_dirs_files_and_the_hf_cache_layout() {
        let root = std::env::temp_dir().join(format!("llmd-locate-{}", std::process::id()));
        let snap = root.join("hub/models--org--model/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("tokenizer.json"), "{}").unwrap();
        std::fs::write(root.join("hub/models--org--model/refs-unused"), "").unwrap();
        let found = locate("org/model", Some(&root.join("hub"))).unwrap();
        assert_eq!(found.tokenizer_json, snap.join("tokenizer.json"));
        assert_eq!(found.tokenizer_config, None);
        std::fs::create_dir_all(root.join("hub/models--org--model/refs")).unwrap();
        std::fs::write(root.join("hub/models--org--model/refs/main"), "abc123\n").unwrap();
        std::fs::write(snap.join("tokenizer_config.json"), "{}").unwrap();
        let found = locate("org/model", Some(&root.join("hub"))).unwrap();
        assert_eq!(
            found.tokenizer_config,
            Some(snap.join("tokenizer_config.json"))
        );
        assert_eq!(locate(&snap.display().to_string(), None).unwrap(), found);
        assert_eq!(
            locate(&snap.join("tokenizer.json").display().to_string(), None).unwrap(),
            found
        );
        let err = locate("org/missing", Some(&root.join("hub")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("models--org--missing"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
