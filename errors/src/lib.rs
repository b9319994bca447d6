//! An error and its causes, shown one way everywhere: logs, `ft.status` reasons and the API's
//! error arrays all walk `source()` with these functions, so no layer flattens a cause away.

use std::error::Error;
use std::fmt;

/// Shows an error followed by each of its causes, outermost first: `outer: cause: root`.
pub struct Chain<'a>(pub &'a dyn Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// The error and its causes on one line, for logs and status reasons.
pub fn chain(e: &dyn Error) -> String {
    Chain(e).to_string()
}

/// The error's message followed by each cause's, outermost first (the API's `error` array).
pub fn messages(e: &dyn Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push(c.to_string());
        cur = c.source();
    }
    out
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
    fn walks_every_cause_outermost_first() {
        let e = Outer(Middle(std::io::Error::other("root")));
        assert_eq!(chain(&e), "outer: middle: root");
        assert_eq!(messages(&e), ["outer", "middle", "root"]);
        assert_eq!(chain(&std::io::Error::other("alone")), "alone");
    }
}
