//! The character classes the pre-tokenizer regex uses (`\p{L}`, `\p{N}`, `\s`, and the
//! case-insensitive letters of `(?i:'s|'t|'re|'ve|'m|'ll|'d)`), read out of the regex engine HF
//! `tokenizers` itself uses (`tokenizers::utils::SysRegex`, Oniguruma), once per process.
//!
//! Taking them from the engine rather than from a Unicode table crate is what makes the fast
//! scanner agree with HF on every character: Oniguruma and Rust's `regex-syntax` ship different
//! Unicode versions (characters assigned in the newer one are letters to one engine and
//! unassigned to the other), and case folding has non-ASCII members (`ſ` folds to `s`).

use std::sync::OnceLock;

use tokenizers::utils::SysRegex;

/// `\p{L}`.
pub(super) const LETTER: u16 = 1;
/// `\p{N}`.
pub(super) const NUMBER: u16 = 1 << 1;
/// `\s`.
pub(super) const SPACE: u16 = 1 << 2;
/// `(?i:s)` and the other contraction letters, one bit each.
pub(super) const FOLD_S: u16 = 1 << 3;
pub(super) const FOLD_T: u16 = 1 << 4;
pub(super) const FOLD_M: u16 = 1 << 5;
pub(super) const FOLD_D: u16 = 1 << 6;
pub(super) const FOLD_R: u16 = 1 << 7;
pub(super) const FOLD_E: u16 = 1 << 8;
pub(super) const FOLD_V: u16 = 1 << 9;
pub(super) const FOLD_L: u16 = 1 << 10;

/// What each bit is, as the engine is asked.
const PATTERNS: [(&str, u16); 11] = [
    (r"\p{L}+", LETTER),
    (r"\p{N}+", NUMBER),
    (r"\s+", SPACE),
    ("(?i:s)", FOLD_S),
    ("(?i:t)", FOLD_T),
    ("(?i:m)", FOLD_M),
    ("(?i:d)", FOLD_D),
    ("(?i:r)", FOLD_R),
    ("(?i:e)", FOLD_E),
    ("(?i:v)", FOLD_V),
    ("(?i:l)", FOLD_L),
];

/// Class bits of every code point: a block index (one entry per 256 code points) into
/// deduplicated 256-entry leaves (about 60 KB in all).
pub(super) struct Classes {
    blocks: Vec<u16>,
    leaves: Vec<[u16; 256]>,
}

impl std::fmt::Debug for Classes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classes")
            .field("leaves", &self.leaves.len())
            .finish()
    }
}

impl Classes {
    /// The class bits of `c`.
    #[inline]
    pub(super) fn of(&self, c: char) -> u16 {
        let c = c as u32;
        let leaf = self.blocks[(c >> 8) as usize] as usize;
        self.leaves[leaf][(c & 0xff) as usize]
    }

    /// The process-wide table, built on first use (tens of milliseconds), or why it could not
    /// be built.
    pub(super) fn get() -> Result<&'static Classes, String> {
        static CLASSES: OnceLock<Result<Classes, String>> = OnceLock::new();
        CLASSES
            .get_or_init(Self::from_engine)
            .as_ref()
            .map_err(Clone::clone)
    }

    fn from_engine() -> Result<Self, String> {
        // Every scalar value once, in order; the engine marks the ones in each class.
        let all: String = (0..=char::MAX as u32).filter_map(char::from_u32).collect();
        let mut flat = vec![0u16; char::MAX as usize + 1];
        for (pattern, bit) in PATTERNS {
            let re = SysRegex::new(pattern).map_err(|e| format!("{pattern}: {e}"))?;
            for (start, end) in re.find_iter(&all) {
                let Some(matched) = all.get(start..end) else {
                    return Err(format!("{pattern}: match off a char boundary"));
                };
                let mut chars = 0;
                for c in matched.chars() {
                    flat[c as usize] |= bit;
                    chars += 1;
                }
                // A case-insensitive letter must match one character (no multi-character
                // folding), or the scanner's two-character contractions would be wrong.
                if bit >= FOLD_S && chars != 1 {
                    return Err(format!("{pattern} matched {matched:?}"));
                }
            }
        }
        let mut blocks = Vec::with_capacity(flat.len() / 256);
        let mut leaves: Vec<[u16; 256]> = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for chunk in flat.chunks_exact(256) {
            let mut leaf = [0u16; 256];
            leaf.copy_from_slice(chunk);
            let next = leaves.len();
            let idx = *seen.entry(leaf).or_insert_with(|| {
                leaves.push(leaf);
                next
            });
            blocks.push(u16::try_from(idx).map_err(|_| "too many leaves".to_owned())?);
        }
        Ok(Self { blocks, leaves })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_come_from_the_engine() {
        let c = Classes::get().unwrap();
        assert_eq!(c.of('a') & (LETTER | NUMBER | SPACE), LETTER);
        assert_eq!(c.of('東') & LETTER, LETTER);
        assert_eq!(c.of('7') & NUMBER, NUMBER);
        assert_eq!(c.of('½') & NUMBER, NUMBER, "No counts as \\p{{N}}");
        assert_eq!(c.of('\u{3000}') & SPACE, SPACE);
        assert_eq!(c.of('\u{85}') & SPACE, SPACE);
        assert_eq!(c.of('!'), 0);
        assert_eq!(c.of('\u{10FFFF}'), 0);
        // Case folding reaches beyond ASCII.
        assert_ne!(c.of('ſ') & FOLD_S, 0);
        assert_ne!(c.of('S') & FOLD_S, 0);
        assert_eq!(c.of('ß') & FOLD_S, 0);
        assert!(c.leaves.len() < 400, "{} leaves", c.leaves.len());
    }
}
