//! A hand-written matcher for the pre-tokenizer regex of Llama-3 and Qwen2/3 (OpenAI's cl100k
//! family), with Oniguruma's leftmost-first, greedy, backtracking semantics:
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)        A1 contraction
//! |[^\r\n\p{L}\p{N}]?\p{L}+           A2 word, with one leading non-letter
//! |\p{N}{1,3}                         A3 digits (Qwen: \p{N}, one at a time)
//! | ?[^\s\p{L}\p{N}]+[\r\n]*          A4 punctuation, then newlines
//! |\s*[\r\n]+                         A5 whitespace up to the last newline of the run
//! |\s+(?!\S)                          A6 whitespace but the last char before a non-space
//! |\s+                                A7 whitespace
//! ```
//!
//! Every character is a letter, a number, a space or "other", so the pieces tile the text.
//! It is the regex engine's cost (most of HF's time) that this replaces; the tests compare its
//! pieces with HF's `Split` pre-tokenizer on random text.

use super::classes::{
    Classes, FOLD_D, FOLD_E, FOLD_L, FOLD_M, FOLD_R, FOLD_S, FOLD_T, FOLD_V, LETTER, NUMBER, SPACE,
};

/// The two patterns this matcher implements, as they appear in `tokenizer.json`, with the
/// longest digit run each allows.
pub(super) const PATTERNS: [(&str, usize); 2] = [
    // Llama-3, Llama-3.1, ... (cl100k's pattern).
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        3,
    ),
    // Qwen2, Qwen2.5, Qwen3.
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        1,
    ),
];

/// Splits text into pre-tokens.
#[derive(Debug, Clone, Copy)]
pub(super) struct PreTokenizer {
    pub(super) classes: &'static Classes,
    /// `\p{N}{1,max_digits}`.
    pub(super) max_digits: usize,
}

/// The character at byte `i` and its length (`i` on a char boundary, below `s.len()`).
#[inline]
fn char_at(s: &str, i: usize) -> (char, usize) {
    let b = s.as_bytes()[i];
    if b < 0x80 {
        return (b as char, 1);
    }
    match s[i..].chars().next() {
        Some(c) => (c, c.len_utf8()),
        None => ('\0', 1), // unreachable: `i < s.len()` on a boundary
    }
}

const fn is_crlf(c: char) -> bool {
    c == '\r' || c == '\n'
}

impl PreTokenizer {
    #[inline]
    fn class(&self, c: char) -> u16 {
        self.classes.of(c)
    }

    /// "Other": neither a letter, a number nor a space.
    #[inline]
    fn is_other(&self, cls: u16) -> bool {
        cls & (LETTER | NUMBER | SPACE) == 0
    }

    /// End of the run from `i` of characters whose class has any of `bits`.
    #[inline]
    fn run(&self, s: &str, mut i: usize, bits: u16) -> usize {
        let b = s.as_bytes();
        while i < b.len() {
            // ASCII letters are by far the commonest run.
            if b[i] < 0x80 {
                if self.class(b[i] as char) & bits == 0 {
                    break;
                }
                i += 1;
                continue;
            }
            let (c, n) = char_at(s, i);
            if self.class(c) & bits == 0 {
                break;
            }
            i += n;
        }
        i
    }

    /// End of the run from `i` of "other" characters.
    #[inline]
    fn other_run(&self, s: &str, mut i: usize) -> usize {
        while i < s.len() {
            let (c, n) = char_at(s, i);
            if !self.is_other(self.class(c)) {
                break;
            }
            i += n;
        }
        i
    }

    /// Calls `piece` with each pre-token's byte range, in order.
    pub(super) fn split(&self, s: &str, mut piece: impl FnMut(usize, usize)) {
        let mut i = 0;
        while i < s.len() {
            let end = self.next_end(s, i);
            piece(i, end);
            i = end;
        }
    }

    /// The end of the pre-token starting at `i`.
    fn next_end(&self, s: &str, i: usize) -> usize {
        let (c0, n0) = char_at(s, i);
        let cls0 = self.class(c0);
        let next = (i + n0 < s.len()).then(|| char_at(s, i + n0));

        // A1: contractions.
        if c0 == '\''
            && let Some((c1, n1)) = next
        {
            let k1 = self.class(c1);
            if k1 & (FOLD_S | FOLD_T | FOLD_M | FOLD_D) != 0 {
                return i + n0 + n1;
            }
            if k1 & (FOLD_R | FOLD_V | FOLD_L) != 0 && i + n0 + n1 < s.len() {
                let (c2, n2) = char_at(s, i + n0 + n1);
                let k2 = self.class(c2);
                let second = if k1 & FOLD_L != 0 { FOLD_L } else { FOLD_E };
                // `'re`/`'ve` need an e after the r/v; `'ll` an l after the l (a char cannot be
                // both r and l, so the choice of `second` is unambiguous).
                if k2 & second != 0 {
                    return i + n0 + n1 + n2;
                }
            }
        }

        // A2: letters, or one non-letter (not CR/LF, not a number) followed by letters.
        if cls0 & LETTER != 0 {
            return self.run(s, i + n0, LETTER);
        }
        if cls0 & NUMBER == 0
            && !is_crlf(c0)
            && let Some((c1, n1)) = next
            && self.class(c1) & LETTER != 0
        {
            return self.run(s, i + n0 + n1, LETTER);
        }

        // A3: up to `max_digits` numbers.
        if cls0 & NUMBER != 0 {
            let mut end = i + n0;
            for _ in 1..self.max_digits {
                if end >= s.len() {
                    break;
                }
                let (c, n) = char_at(s, end);
                if self.class(c) & NUMBER == 0 {
                    break;
                }
                end += n;
            }
            return end;
        }

        // A4: an optional space, "other" characters, then CR/LF.
        let others_from = if self.is_other(cls0) {
            Some(i)
        } else if c0 == ' '
            && let Some((c1, _)) = next
            && self.is_other(self.class(c1))
        {
            Some(i + n0)
        } else {
            None
        };
        if let Some(from) = others_from {
            let mut end = self.other_run(s, from);
            while end < s.len() && is_crlf(s.as_bytes()[end] as char) {
                end += 1;
            }
            return end;
        }

        // Whitespace from here on (`c0` is neither a letter, a number nor "other").
        let run_end = self.run(s, i, SPACE);
        // A5: up to and including the last CR/LF of the run.
        if let Some(last) = s.as_bytes()[i..run_end]
            .iter()
            .rposition(|b| *b == b'\r' || *b == b'\n')
        {
            return i + last + 1;
        }
        // A6: the run but its last char, when a non-space follows and the run has two chars.
        if run_end < s.len() {
            let last_start = s[..run_end]
                .char_indices()
                .next_back()
                .map_or(i, |(at, _)| at);
            if last_start > i {
                return last_start;
            }
        }
        // A6 at the end of the text, or A7.
        run_end
    }
}
