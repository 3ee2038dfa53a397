//! How a call ended: the one table every view iterates over.
//!
//! Every call ends in exactly one outcome. The per-method counters are an
//! array indexed by it, Prometheus labels and help text, the admin API's
//! fields and the client-facing exception texts all come from here. Adding
//! an outcome: one line in the `outcomes!` list below (and, if the data
//! plane answers with it, its text in `exception_text`; the compiler asks),
//! a field in `admin.proto`'s `MethodStats` and `ServiceStats` with its arm
//! in `control/admin/convert.rs` (the compiler asks again), and one line in
//! `thriftctl`'s `outcomes!` list (ctl/src/model.rs).

use crate::thrift::ReplyKind;

crate::telemetry::labelled_enum! {
    /// How one call ended.
    Outcome,
    /// A normal reply (oneway: the worker ran it).
    Success => "success",
    /// A reply carrying an exception declared in the IDL.
    DeclaredException => "declared_exception",
    /// A `TApplicationException` from the worker.
    AppException => "app_exception",
    /// No reply before the call's deadline.
    Timeout => "timeout",
    /// Shed: queue full, no worker free within `queue_timeout`, or the
    /// request memory budget used up.
    Overloaded => "overloaded",
    /// Overloaded while the service had no live worker.
    NoWorker => "no_worker",
    /// Its worker died (or was evicted) while holding it.
    WorkerDied => "worker_died",
    /// Still pending when the drain timed out.
    Shutdown => "shutdown",
    /// The worker answered a two-way call with nothing.
    EmptyReply => "empty_reply",
    /// The client closed its connection while the call waited in the queue:
    /// dropped, never sent to a worker.
    Abandoned => "abandoned",
    /// The worker's reply did not answer the call (wrong protocol, type,
    /// name, seqid, or too large): the client got an exception instead.
    BadReply => "bad_reply",
}

/// How many outcomes there are.
pub const OUTCOMES: usize = Outcome::ALL.len();

impl Outcome {
    /// Position in [`Outcome::ALL`] (and in a counter array).
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A failure of the data plane or the worker (counted in `errors`):
    /// every outcome but success, declared exceptions (answers of the
    /// service) and calls the client abandoned.
    pub const fn is_error(self) -> bool {
        !matches!(
            self,
            Outcome::Success | Outcome::DeclaredException | Outcome::Abandoned
        )
    }

    /// What the client's `TApplicationException` says, after
    /// "thriftworker: service 'S' ", when the data plane answers the call
    /// itself; `None` when the answer is the worker's own (or there is none).
    pub const fn exception_text(self) -> Option<&'static str> {
        match self {
            Outcome::Timeout => Some("timed out: no reply before the deadline"),
            Outcome::Overloaded => Some("overloaded"),
            Outcome::NoWorker => Some("overloaded: no live worker (none connected or all dead)"),
            Outcome::WorkerDied => Some("worker died while handling the call"),
            Outcome::Shutdown => Some("shutting down: call not served"),
            Outcome::EmptyReply => Some("worker returned no reply"),
            Outcome::BadReply => Some("worker returned a reply that does not answer the call"),
            Outcome::Success
            | Outcome::DeclaredException
            | Outcome::AppException
            | Outcome::Abandoned => None,
        }
    }

    /// The outcome of a worker's reply that passed `check_reply`.
    pub const fn of_reply(kind: ReplyKind) -> Outcome {
        match kind {
            ReplyKind::Success => Outcome::Success,
            ReplyKind::DeclaredException => Outcome::DeclaredException,
            ReplyKind::AppException | ReplyKind::Unreadable => Outcome::AppException,
        }
    }
}

/// The Prometheus help text of `thriftworker_call_outcomes_total`.
pub fn help() -> String {
    let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.label()).collect();
    format!("Calls finished, by how: {}.", labels.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_index_order_and_labels_are_unique() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?}");
        }
        let mut labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), OUTCOMES);
    }

    #[test]
    fn errors_are_what_the_views_always_summed() {
        let errors: Vec<&str> = Outcome::ALL
            .iter()
            .filter(|o| o.is_error())
            .map(|o| o.label())
            .collect();
        assert_eq!(
            errors,
            [
                "app_exception",
                "timeout",
                "overloaded",
                "no_worker",
                "worker_died",
                "shutdown",
                "empty_reply",
                "bad_reply"
            ]
        );
    }
}
