//! Walking an error's `source()` chain: the whole chain as one message, or the first cause of
//! a given type (hyper, axum and tonic wrap the cause that decides a status several levels
//! down).

use std::error::Error;

/// The error and its causes, outermost first.
pub fn sources<'a>(
    error: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |e: &&'a (dyn Error + 'static)| (*e).source())
}

/// The first error of type `T` in the chain.
pub fn find<'a, T: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a T> {
    sources(error).find_map(|e| e.downcast_ref::<T>())
}

/// The whole chain as one line, `outer: cause: root cause`. A cause whose text the previous
/// message already ends with is left out (hyper and tonic often repeat their cause).
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = String::new();
    for e in sources(error) {
        let part = e.to_string();
        if part.is_empty() || text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn chain_and_find() {
        let e = Outer(Middle(std::io::Error::other("root")));
        assert_eq!(chain(&e), "outer: middle: root");
        assert!(find::<std::io::Error>(&e).is_some());
        assert!(find::<std::fmt::Error>(&e).is_none());
        assert_eq!(sources(&e).count(), 3);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connect failed: refused")]
    struct Repeats(#[source] Root);

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Root;

    #[test]
    fn a_repeated_cause_is_said_once() {
        assert_eq!(chain(&Repeats(Root)), "connect failed: refused");
    }
}
