//! The client's history: every INC it sent, when, and what came back, and the check that no
//! acknowledged value was ever lost.
//!
//! An INC stores the counter on disk and flushes *before* it replies, so an acknowledged value
//! `v` means the counter reached `v` for good. The next acknowledged value must be `v + 1`, or,
//! if INCs went unanswered in between (a connection that broke during a guest reboot), at most
//! one more per unanswered INC (they may or may not have been applied). Anything else — a value
//! at or below `v`, or a jump — is a lost or invented write.

use std::time::{Duration, Instant};

/// One INC.
#[derive(Debug, Clone)]
pub struct Op {
    /// When it was sent, from the start of the run.
    pub sent: Duration,
    /// How long until the answer (or the failure).
    pub took: Duration,
    /// The value, or why there was none.
    pub reply: Result<u64, String>,
}

/// Every INC of a run, in order.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every INC sent, in sending order.
    pub ops: Vec<Op>,
}

/// Where the history breaks the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Index of the offending op.
    pub at: usize,
    /// What is wrong.
    pub what: String,
}

impl History {
    /// Records one INC that started at `started` (`run_start` is the run's zero).
    pub fn record(&mut self, run_start: Instant, started: Instant, reply: Result<u64, String>) {
        self.ops.push(Op {
            sent: started.duration_since(run_start),
            took: started.elapsed(),
            reply,
        });
    }

    /// The last acknowledged value, if any.
    pub fn last_acked(&self) -> Option<u64> {
        self.ops
            .iter()
            .rev()
            .find_map(|o| o.reply.as_ref().ok().copied())
    }

    /// Acknowledged INCs.
    pub fn acked(&self) -> usize {
        self.ops.iter().filter(|o| o.reply.is_ok()).count()
    }

    /// The first place the rule breaks, if any.
    pub fn check(&self) -> Option<Violation> {
        let mut last: Option<u64> = None;
        let mut unanswered = 0u64;
        for (at, op) in self.ops.iter().enumerate() {
            let v = match &op.reply {
                Ok(v) => *v,
                Err(_) => {
                    unanswered += 1;
                    continue;
                }
            };
            if let Some(prev) = last {
                let (lo, hi) = (prev + 1, prev + 1 + unanswered);
                if v < lo || v > hi {
                    return Some(Violation {
                        at,
                        what: format!(
                            "INC answered {v} after {prev} with {unanswered} unanswered INCs \
                             between: expected {lo}..={hi}"
                        ),
                    });
                }
            }
            last = Some(v);
            unanswered = 0;
        }
        None
    }

    /// The ops around `at`, for a failure message.
    pub fn around(&self, at: usize) -> String {
        let from = at.saturating_sub(5);
        let to = (at + 3).min(self.ops.len());
        self.ops[from..to]
            .iter()
            .enumerate()
            .map(|(i, o)| {
                format!(
                    "  #{} at {:?} (took {:?}): {:?}",
                    from + i,
                    o.sent,
                    o.took,
                    o.reply
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(replies: &[Result<u64, &str>]) -> History {
        History {
            ops: replies
                .iter()
                .map(|r| Op {
                    sent: Duration::ZERO,
                    took: Duration::ZERO,
                    reply: r.map_err(str::to_string),
                })
                .collect(),
        }
    }

    #[test]
    fn a_steady_count_passes_and_a_lost_or_invented_write_does_not() {
        assert_eq!(h(&[Ok(1), Ok(2), Ok(3)]).check(), None);
        // An INC lost to a broken connection may or may not have been applied.
        assert_eq!(h(&[Ok(1), Err("reset"), Ok(2)]).check(), None);
        assert_eq!(h(&[Ok(1), Err("reset"), Ok(3)]).check(), None);
        // Going back: the acknowledged 2 was lost.
        assert_eq!(h(&[Ok(1), Ok(2), Ok(2)]).check().map(|v| v.at), Some(2));
        assert_eq!(h(&[Ok(5), Ok(4)]).check().map(|v| v.at), Some(1));
        // A jump with nothing unanswered: a write nobody asked for.
        assert_eq!(h(&[Ok(1), Ok(3)]).check().map(|v| v.at), Some(1));
        assert_eq!(h(&[Ok(1), Err("x"), Ok(4)]).check().map(|v| v.at), Some(2));
    }
}
