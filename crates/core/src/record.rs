//! Decision records: which decisions a host logs ([`Sampler`]) and what a record says
//! ([`DecisionRecord`], its fields and their text form). Shared by the server's log and the
//! Envoy module's, so that both write the same records under the same budget. Where records go
//! and when is the host's (the core has no clock and does no I/O: the time is passed in).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::verdict::{Outcome, Verdict};

/// Denial records written a second, per reason.
pub const DENIALS_PER_SECOND: u32 = 100;
/// The message of a decision record.
pub const DECISION_MESSAGE: &str = "decision";
/// The message of the note that says how many denial records of a reason were left out.
pub const SUPPRESSED_MESSAGE: &str = "denial records left out over the per-reason budget";
/// The environment variable holding the fraction of allows to log (default 1).
pub const SAMPLE_VARIABLE: &str = "NMP_AUTHZ_DECISION_LOG_SAMPLE";

/// Which decisions are logged. Allows: one in `allow_every` (1: all; 0: none), from the
/// fraction of allows to log. Denials: up to [`DENIALS_PER_SECOND`] a second for each reason,
/// so a flood of one kind (401s from a client without a token) neither floods the log nor hides
/// the other kinds; what is left out is counted, for the host to report with the reason's next
/// record after the second ([`Denial::suppressed`]) and at shutdown ([`Sampler::take_suppressed`]).
#[derive(Debug)]
pub struct Sampler {
    allow_every: u64,
    allows: AtomicU64,
    /// Each outcome's current second ([`Outcome::index`]). Taken only for denials, briefly.
    denials: Box<[Mutex<DenialWindow>; Outcome::COUNT]>,
}

/// One reason's denials in the current second.
#[derive(Debug, Default)]
struct DenialWindow {
    second: u64,
    written: u32,
    /// Left out since the last report.
    suppressed: u64,
}

/// What [`Sampler::denial`] says about one denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    /// Within its reason's budget: write its record.
    pub write: bool,
    /// Records of the same reason left out in earlier seconds and not reported yet (now
    /// reported: the count starts again from 0).
    pub suppressed: u64,
}

impl Sampler {
    /// Logs `allow_fraction` of allows (≤ 0 or NaN: none; ≥ 1: all).
    pub fn new(allow_fraction: f64) -> Self {
        let allow_every = if allow_fraction <= 0.0 || allow_fraction.is_nan() {
            0
        } else {
            (1.0 / allow_fraction.min(1.0)).round() as u64
        };
        Self {
            allow_every,
            allows: AtomicU64::new(0),
            denials: Box::new(std::array::from_fn(|_| Mutex::default())),
        }
    }

    /// [`SAMPLE_VARIABLE`]'s value as a fraction: `None` when it is not a number.
    pub fn parse_fraction(text: &str) -> Option<f64> {
        text.trim().parse::<f64>().ok()
    }

    /// Whether any allow is logged.
    pub fn logs_allows(&self) -> bool {
        self.allow_every > 0
    }

    /// Whether to log this allow.
    pub fn allow(&self) -> bool {
        self.allow_every > 0
            && self
                .allows
                .fetch_add(1, Relaxed)
                .is_multiple_of(self.allow_every)
    }

    /// Whether a denial for `outcome` in `second` (any clock the host keeps in whole seconds)
    /// is within its budget, and what was left out before.
    pub fn denial(&self, outcome: Outcome, second: u64) -> Denial {
        let mut window = lock(&self.denials[outcome.index()]);
        let mut suppressed = 0;
        if window.second != second {
            suppressed = std::mem::take(&mut window.suppressed);
            window.second = second;
            window.written = 0;
        }
        let write = window.written < DENIALS_PER_SECOND;
        if write {
            window.written += 1;
        } else {
            window.suppressed += 1;
        }
        Denial { write, suppressed }
    }

    /// The counts left out and not reported yet, by outcome (taken: reported once), for the
    /// host to report at shutdown.
    pub fn take_suppressed(&self) -> Vec<(Outcome, u64)> {
        Outcome::all()
            .filter_map(|outcome| {
                let taken = std::mem::take(&mut lock(&self.denials[outcome.index()]).suppressed);
                (taken > 0).then_some((outcome, taken))
            })
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One decision record. Redacted by construction: no header value, no token, no query string
/// (it can carry credentials); only the decision's facts.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct DecisionRecord<'a> {
    pub message: &'static str,
    pub allowed: bool,
    pub status: u16,
    pub reason: &'a str,
    pub method: &'a str,
    /// Without its query.
    pub path: &'a str,
    pub principal_id: &'a str,
    pub workspace: &'a str,
    pub endpoint: &'a str,
    pub policy_revision: &'a str,
    /// Time spent deciding, in the host.
    pub micros: u64,
}

impl<'a> DecisionRecord<'a> {
    /// The record of `verdict` on the request `method path` (its query dropped here).
    pub fn of(verdict: &'a Verdict<'_>, method: &'a str, path: &'a str, micros: u64) -> Self {
        let decision = verdict.decision.as_ref();
        Self {
            message: DECISION_MESSAGE,
            allowed: verdict.allowed(),
            status: verdict.status.http(),
            reason: verdict.outcome.as_str(),
            method,
            path: without_query(path),
            principal_id: verdict
                .principal
                .as_ref()
                .and_then(|p| p.id.as_deref())
                .unwrap_or_default(),
            workspace: decision
                .and_then(|d| d.workspace.as_deref())
                .unwrap_or_default(),
            endpoint: decision.and_then(|d| d.endpoint).unwrap_or_default(),
            policy_revision: verdict.policy.map_or("", |p| p.revision()),
            micros,
        }
    }

    /// The fields in text form, each after a space: ` allowed=false status=403 reason="..."
    /// ... micros=12` (strings quoted and escaped as `{:?}` writes them). The fields one by one
    /// rather than through `write!`: its formatting machinery was most of a record's cost.
    pub fn write_fields(&self, line: &mut Vec<u8>) {
        let mut number = itoa::Buffer::new();
        line.extend_from_slice(if self.allowed {
            b" allowed=true"
        } else {
            b" allowed=false"
        });
        line.extend_from_slice(b" status=");
        line.extend_from_slice(number.format(self.status).as_bytes());
        for (key, value) in [
            (&b" reason="[..], self.reason),
            (b" method=", self.method),
            (b" path=", self.path),
            (b" principal_id=", self.principal_id),
            (b" workspace=", self.workspace),
            (b" endpoint=", self.endpoint),
            (b" policy_revision=", self.policy_revision),
        ] {
            line.extend_from_slice(key);
            push_quoted(line, value);
        }
        line.extend_from_slice(b" micros=");
        line.extend_from_slice(number.format(self.micros).as_bytes());
    }
}

/// The bytes `{:?}` writes unescaped inside quotes: printable ASCII but `"` and `\`.
const WRITTEN_AS_IS: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = b' ';
    while byte <= b'~' {
        table[byte as usize] = byte != b'"' && byte != b'\\';
        byte += 1;
    }
    table
};

/// `path` without its query.
pub fn without_query(path: &str) -> &str {
    path.split('?').next().unwrap_or_default()
}

/// The text of the note for `suppressed` records of `reason` left out: ` reason="..."
/// suppressed=N per_second=100` after [`SUPPRESSED_MESSAGE`].
pub fn write_suppressed(line: &mut Vec<u8>, reason: &str, suppressed: u64) {
    let mut number = itoa::Buffer::new();
    line.extend_from_slice(SUPPRESSED_MESSAGE.as_bytes());
    line.extend_from_slice(b" reason=");
    push_quoted(line, reason);
    line.extend_from_slice(b" suppressed=");
    line.extend_from_slice(number.format(suppressed).as_bytes());
    line.extend_from_slice(b" per_second=");
    line.extend_from_slice(number.format(DENIALS_PER_SECOND).as_bytes());
}

/// `value` as `{:?}` writes it (quoted, escaped), without the formatting machinery in the
/// usual case of nothing to escape.
pub fn push_quoted(line: &mut Vec<u8>, value: &str) {
    // One table lookup a byte: the range-and-two-compares test was ~12 instructions a byte,
    // most of a record's cost (BENCHMARKS.md 2.1).
    if value.bytes().all(|b| WRITTEN_AS_IS[usize::from(b)]) {
        line.push(b'"');
        line.extend_from_slice(value.as_bytes());
        line.push(b'"');
    } else {
        line.extend_from_slice(format!("{value:?}").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Reason;
    use crate::verdict::Early;

    #[test]
    fn allows_are_sampled() {
        let count = |sampler: &Sampler| (0..100).filter(|_| sampler.allow()).count();
        assert_eq!(count(&Sampler::new(1.0)), 100);
        assert_eq!(count(&Sampler::new(0.1)), 10);
        assert_eq!(count(&Sampler::new(0.0)), 0);
        assert_eq!(count(&Sampler::new(f64::NAN)), 0);
        assert_eq!(count(&Sampler::new(7.0)), 100);
        assert!(!Sampler::new(0.0).logs_allows());
        assert_eq!(Sampler::parse_fraction(" 0.5 "), Some(0.5));
        assert_eq!(Sampler::parse_fraction("half"), None);
    }

    #[test]
    fn denials_have_a_budget_per_reason_and_second_and_what_is_left_out_is_counted() {
        let refused = Outcome::Early(Early::InvalidIdentity);
        let forbidden = Outcome::Decided(Reason::NotPermitted);
        // The allow sample does not apply to denials.
        let sampler = Sampler::new(0.0);
        let budget = DENIALS_PER_SECOND as usize;
        let written = (0..budget + 50)
            .filter(|_| sampler.denial(refused, 0).write)
            .count();
        assert_eq!(written, budget);
        // Another kind of denial in the same second is still logged.
        let first = Denial {
            write: true,
            suppressed: 0,
        };
        assert_eq!(sampler.denial(forbidden, 0), first);
        // The flood's next second: logged again, with the count left out before, once.
        let reported = Denial {
            write: true,
            suppressed: 50,
        };
        assert_eq!(sampler.denial(refused, 1), reported);
        assert_eq!(sampler.denial(refused, 1), first);
        // Second 1 in all: the budget and 7 more, taken at shutdown once.
        for _ in 2..budget + 7 {
            sampler.denial(refused, 1);
        }
        assert_eq!(sampler.take_suppressed(), [(refused, 7)]);
        assert_eq!(sampler.take_suppressed(), []);
        assert_eq!(sampler.denial(refused, 5), first);
        // Any clock: a second that goes back is another second too.
        for _ in 0..budget {
            sampler.denial(forbidden, 3);
        }
        assert!(!sampler.denial(forbidden, 3).write);
        assert_eq!(
            sampler.denial(forbidden, 2),
            Denial {
                write: true,
                suppressed: 1
            }
        );
    }

    #[test]
    fn fields_are_written_as_the_log_formatter_writes_them() {
        let record = DecisionRecord {
            message: DECISION_MESSAGE,
            allowed: false,
            status: 403,
            reason: "not_permitted",
            method: "GET",
            path: without_query("/a\"b\nc?token=secret"),
            principal_id: "alice",
            workspace: "ws",
            endpoint: "/a/{x}",
            policy_revision: "r1",
            micros: 12,
        };
        let mut line = Vec::new();
        record.write_fields(&mut line);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            " allowed=false status=403 reason=\"not_permitted\" method=\"GET\" \
             path=\"/a\\\"b\\nc\" principal_id=\"alice\" workspace=\"ws\" endpoint=\"/a/{x}\" \
             policy_revision=\"r1\" micros=12"
        );
        let mut note = Vec::new();
        write_suppressed(&mut note, "no_identity", 5);
        assert_eq!(
            String::from_utf8(note).unwrap(),
            "denial records left out over the per-reason budget reason=\"no_identity\" \
             suppressed=5 per_second=100"
        );
    }

    #[test]
    fn quoted_values_are_written_as_debug_formatting_writes_them() {
        for value in [
            "",
            "plain /apis/x?y=1",
            "quote\"",
            "back\\slash",
            "tab\t",
            "nl\n",
            "nul\0",
            "é",
            "\u{7f}",
            "\u{200b}",
            "~ and space",
        ] {
            let mut line = Vec::new();
            push_quoted(&mut line, value);
            assert_eq!(String::from_utf8(line).unwrap(), format!("{value:?}"));
        }
    }
}
