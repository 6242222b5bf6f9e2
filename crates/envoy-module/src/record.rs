//! Decision records from inside Envoy, as the server writes them (README "Logs"): the core's
//! [`Sampler`] decides which decisions are recorded (denials up to 100 a second for each
//! reason, what is left out noted with the reason's next record after the second and when the
//! records stop; allows sampled by `NMP_AUTHZ_DECISION_LOG_SAMPLE`), the core's
//! [`DecisionRecord`] says what a record holds, and a writer thread of the module's writes the
//! lines to Envoy's log (info level, component `dynamic_modules`).
//!
//! A request never waits on the log: lines go through a bounded queue, and a line that finds
//! it full is dropped and counted (the hook counts it in Envoy's stats too; the writer notes the
//! count in the log, at most once a second). The writer wakes up every 50 ms rather than per
//! line (a receiver blocked in `recv` costs the sender a futex wake-up per line).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nmp_authz_core::record::{self, DecisionRecord, SAMPLE_VARIABLE, Sampler};
use nmp_authz_core::verdict::{Outcome, Status};

use crate::gate::{Action, Answer};

/// Where the lines go (Envoy's log, through the ABI; something else in tests). Called on the
/// writer thread, and once on the thread that creates the records when the sample setting is
/// unreadable.
pub type Sink = Arc<dyn Fn(Level, &str) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

/// Lines waiting for the writer; a line that finds the queue full is dropped. At ~300 bytes a
/// line, a few MiB at most (the server's bound).
pub const QUEUE_LINES: usize = 16 * 1024;
/// How long the writer sleeps when there was little to write: how long a line may wait.
const WRITE_EVERY: Duration = Duration::from_millis(50);
/// Dropped lines are noted at most this often (and once more when the writer stops).
const DROP_NOTE_EVERY: Duration = Duration::from_secs(1);
/// How long the last filter configuration's removal waits for the writer to finish: a log that
/// does not take lines (a blocked stderr) must not hold up Envoy's main thread.
const STOP_WAIT: Duration = Duration::from_secs(2);
/// The server's record target, so that one search finds both hosts' records.
const TARGET: &str = "nmp_authz::decision: ";

/// The records of every filter configuration in the Envoy process (one budget, one writer, as
/// one server has): made with the first configuration, stopped with the last.
static SHARED: Mutex<Weak<Records>> = Mutex::new(Weak::new());

/// Which decisions are recorded, and the queue to the writer thread.
pub struct Records {
    sampler: Sampler,
    /// The clock of the denial budget's seconds.
    epoch: Instant,
    queue: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
    /// Dropped (closing the channel) to stop the writer.
    stop: Option<mpsc::Sender<()>>,
    /// Closed by the writer as it ends (in a mutex only to make the records `Sync`).
    done: Mutex<Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("sampler", &self.sampler)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl Records {
    /// The process's records: the existing ones, or new ones (the sample read from Envoy's
    /// environment; an unreadable value records every allow, and says so).
    pub fn shared(sink: Sink) -> Result<Arc<Records>, String> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(records) = shared.upgrade() {
            return Ok(records);
        }
        let fraction = match std::env::var(SAMPLE_VARIABLE) {
            Err(_) => 1.0,
            Ok(text) => Sampler::parse_fraction(&text).unwrap_or_else(|| {
                sink(
                    Level::Warn,
                    &format!(
                        "nmp-authz: {SAMPLE_VARIABLE} is not a number ({text:?}); recording \
                         every decision"
                    ),
                );
                1.0
            }),
        };
        let records = Arc::new(Records::start(sink, fraction)?);
        *shared = Arc::downgrade(&records);
        Ok(records)
    }

    /// Records logging `allow_fraction` of allows, written to `sink` by a new writer thread.
    pub fn start(sink: Sink, allow_fraction: f64) -> Result<Self, String> {
        let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
        let (stop, stopped) = mpsc::channel::<()>();
        let (finished, done) = mpsc::channel::<()>();
        let dropped = Arc::new(AtomicU64::new(0));
        let thread = {
            let dropped = dropped.clone();
            std::thread::Builder::new()
                .name("nmp-authz-log".into())
                .spawn(move || {
                    write_lines(&lines, &stopped, &*sink, &dropped);
                    drop(finished);
                })
                .map_err(|e| format!("cannot start the decision record writer: {e}"))?
        };
        Ok(Self {
            sampler: Sampler::new(allow_fraction),
            epoch: Instant::now(),
            queue,
            dropped,
            stop: Some(stop),
            done: Mutex::new(done),
            thread: Some(thread),
        })
    }

    /// Whether an allow may be recorded at all (else the host need not time it).
    pub fn records_allows(&self) -> bool {
        self.sampler.logs_allows()
    }

    /// Records `answer`, the decision on the request with `headers` whose hook began at
    /// `started`, when the budget or the sample says so. Nothing is built for a decision not
    /// recorded. Returns how many lines were dropped because the queue was full.
    pub fn decision(&self, answer: &Answer, headers: &[(&[u8], &[u8])], started: Instant) -> u64 {
        let allowed = answer.status == Status::Ok;
        let mut dropped = 0;
        let write = if allowed {
            self.sampler.allow()
        } else {
            let second = started.saturating_duration_since(self.epoch).as_secs();
            let denial = self.sampler.denial(answer.outcome, second);
            if denial.suppressed > 0 {
                dropped += self.suppressed(answer.outcome, denial.suppressed);
            }
            denial.write
        };
        if write {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            dropped += self.send(line_of(answer, headers, micros));
        }
        dropped
    }

    /// Records a request whose decision panicked (answered 503, reason `internal_error`): every
    /// one, outside the denial budget (each is a bug to find). Returns 1 if the line was dropped.
    pub fn internal_error(
        &self,
        reason: &str,
        headers: &[(&[u8], &[u8])],
        started: Instant,
    ) -> u64 {
        let (method, path) = (pseudo(headers, ":method"), pseudo(headers, ":path"));
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.send(line(&DecisionRecord {
            message: record::DECISION_MESSAGE,
            allowed: false,
            status: 503,
            reason,
            method: &method,
            path: record::without_query(&path),
            principal_id: "",
            workspace: "",
            endpoint: "",
            policy_revision: "",
            micros,
        }))
    }

    /// Queues the note for `suppressed` records of `outcome` left out; 1 if it was dropped.
    fn suppressed(&self, outcome: Outcome, suppressed: u64) -> u64 {
        let mut line = Vec::with_capacity(128);
        line.extend_from_slice(TARGET.as_bytes());
        record::write_suppressed(&mut line, outcome.as_str(), suppressed);
        self.send(line)
    }

    /// Queues one line, or drops it if the queue is full (or the writer is gone): 1 if dropped.
    fn send(&self, line: Vec<u8>) -> u64 {
        if self.queue.try_send(line).is_err() {
            self.dropped.fetch_add(1, Relaxed);
            1
        } else {
            0
        }
    }

    /// Lines dropped since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

impl Drop for Records {
    /// The counts left out and not reported yet are noted, what is queued is written, and the
    /// writer stops: waited for at most [`STOP_WAIT`], then left to finish on its own.
    fn drop(&mut self) {
        for (outcome, suppressed) in self.sampler.take_suppressed() {
            self.suppressed(outcome, suppressed);
        }
        drop(self.stop.take());
        let done = self.done.get_mut().unwrap_or_else(|e| e.into_inner());
        match done.recv_timeout(STOP_WAIT) {
            Err(RecvTimeoutError::Disconnected) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
            // Stuck in a log write: Envoy's log is stuck too; do not hold the caller.
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// The record of `answer` as one line: `nmp_authz::decision: decision allowed=... micros=N`,
/// the server's text record after its timestamp and level (Envoy's log line has its own).
fn line_of(answer: &Answer, headers: &[(&[u8], &[u8])], micros: u64) -> Vec<u8> {
    let fact = |key: &str| {
        answer
            .facts
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    };
    // Named in the facts when the policy decided; otherwise (authorization off) by the
    // principal header an allow sets, as the server's record names the principal.
    let principal_id = fact("principal_id").or_else(|| match &answer.action {
        Action::Continue { set, .. } => set
            .iter()
            .find(|(k, _)| *k == "x-nmp-principal-id")
            .map(|(_, v)| v.as_str()),
        Action::Respond { .. } => None,
    });
    let (method, path) = (pseudo(headers, ":method"), pseudo(headers, ":path"));
    line(&DecisionRecord {
        message: record::DECISION_MESSAGE,
        allowed: answer.status == Status::Ok,
        status: answer.status.http(),
        reason: answer.outcome.as_str(),
        method: &method,
        path: record::without_query(&path),
        principal_id: principal_id.unwrap_or_default(),
        workspace: fact("workspace").unwrap_or_default(),
        endpoint: fact("endpoint").unwrap_or_default(),
        policy_revision: fact("policy_revision").unwrap_or_default(),
        micros,
    })
}

/// `record` as one line of Envoy's log.
fn line(record: &DecisionRecord<'_>) -> Vec<u8> {
    let mut line = Vec::with_capacity(384);
    line.extend_from_slice(TARGET.as_bytes());
    line.extend_from_slice(record.message.as_bytes());
    record.write_fields(&mut line);
    line
}

/// A pseudo-header's value as the gate reads it: the one value, or empty when absent or
/// given more than once.
fn pseudo<'h>(headers: &[(&[u8], &'h [u8])], name: &str) -> Cow<'h, str> {
    let mut values = headers.iter().filter(|(k, _)| *k == name.as_bytes());
    match (values.next(), values.next()) {
        (Some((_, v)), None) => crate::gate::text(v),
        _ => Cow::Borrowed(""),
    }
}

/// The writer thread: writes what is queued, notes dropped lines; until told to stop, when it
/// writes what is queued and ends.
fn write_lines(
    lines: &Receiver<Vec<u8>>,
    stop: &Receiver<()>,
    sink: &(dyn Fn(Level, &str) + Send + Sync),
    dropped: &AtomicU64,
) {
    let (mut noted, mut last_note) = (0, None::<Instant>);
    loop {
        // Read before taking: what was queued before the stop is taken below.
        let stopping = !matches!(stop.try_recv(), Err(TryRecvError::Empty));
        let mut taken = 0;
        // At most a queue's worth, so that notes and the stop are looked at under any load.
        while taken < QUEUE_LINES
            && let Ok(line) = lines.try_recv()
        {
            sink(Level::Info, &String::from_utf8_lossy(&line));
            taken += 1;
        }
        let total = dropped.load(Relaxed);
        if total > noted && (stopping || last_note.is_none_or(|at| at.elapsed() >= DROP_NOTE_EVERY))
        {
            sink(
                Level::Warn,
                &format!(
                    "nmp_authz::log: decision records dropped: Envoy's log did not take them as \
                     fast as they came dropped={} total={total}",
                    total - noted
                ),
            );
            (noted, last_note) = (total, Some(Instant::now()));
        }
        if stopping {
            return;
        }
        if taken < QUEUE_LINES / 4 {
            // Woken early only by the stop.
            let _ = stop.recv_timeout(WRITE_EVERY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nmp_authz_core::policy::Reason;
    use nmp_authz_core::verdict::Early;

    /// What a test sink was given.
    type Kept = Arc<Mutex<Vec<(Level, String)>>>;

    /// A sink that keeps what it is given.
    fn keeping() -> (Sink, Kept) {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let into = kept.clone();
        let sink: Sink = Arc::new(move |level, line: &str| {
            into.lock().unwrap().push((level, line.to_owned()));
        });
        (sink, kept)
    }

    fn denial(outcome: Outcome, status: Status) -> Answer {
        Answer {
            action: Action::Respond {
                status: status.http(),
                headers: Vec::new(),
                body: String::new(),
            },
            outcome,
            status,
            facts: vec![
                ("reason", outcome.as_str().into()),
                ("policy_revision", "r1".into()),
                ("principal_id", "bob".into()),
                ("workspace", "ws1".into()),
                ("endpoint", "/apis/x/{workspace}".into()),
            ],
        }
    }

    const HEADERS: [(&[u8], &[u8]); 3] = [
        (b":method", b"GET"),
        (b":path", b"/apis/x/ws1?access_token=secret"),
        (b"authorization", b"Bearer secret-token"),
    ];

    #[test]
    fn a_denial_is_one_line_with_the_facts_and_nothing_secret() {
        let (sink, kept) = keeping();
        let records = Records::start(sink, 0.0).unwrap();
        let forbidden = Outcome::Decided(Reason::NotPermitted);
        let answer = denial(forbidden, Status::Forbidden);
        assert_eq!(records.decision(&answer, &HEADERS, Instant::now()), 0);
        drop(records);
        let kept = kept.lock().unwrap();
        assert_eq!(kept.len(), 1, "{kept:?}");
        let (level, line) = &kept[0];
        assert_eq!(*level, Level::Info);
        let start = "nmp_authz::decision: decision allowed=false status=403 \
                     reason=\"not_permitted\" method=\"GET\" path=\"/apis/x/ws1\" \
                     principal_id=\"bob\" workspace=\"ws1\" endpoint=\"/apis/x/{workspace}\" \
                     policy_revision=\"r1\" micros=";
        assert!(line.starts_with(start), "{line}");
        assert!(!line.contains("secret"), "{line}");
    }

    #[test]
    fn allows_follow_the_sample_and_name_the_principal_without_a_decision() {
        let allow = Answer {
            action: Action::Continue {
                set: vec![
                    ("x-nmp-authorized", "true".into()),
                    ("x-nmp-principal-id", "alice".into()),
                ],
                remove: Vec::new(),
            },
            outcome: Outcome::Early(Early::AuthDisabled),
            status: Status::Ok,
            facts: Vec::new(),
        };
        let (sink, kept) = keeping();
        let none = Records::start(sink, 0.0).unwrap();
        assert!(!none.records_allows());
        for _ in 0..10 {
            none.decision(&allow, &HEADERS, Instant::now());
        }
        drop(none);
        assert!(kept.lock().unwrap().is_empty());

        let (sink, kept) = keeping();
        let all = Records::start(sink, 1.0).unwrap();
        all.decision(&allow, &HEADERS, Instant::now());
        drop(all);
        let kept = kept.lock().unwrap();
        assert_eq!(kept.len(), 1);
        assert!(
            kept[0].1.contains(
                " reason=\"auth_disabled\" method=\"GET\" path=\"/apis/x/ws1\" \
                 principal_id=\"alice\" workspace=\"\""
            ),
            "{kept:?}"
        );
    }

    #[test]
    fn over_the_budget_denials_are_left_out_and_noted_when_the_records_stop() {
        let (sink, kept) = keeping();
        let records = Records::start(sink, 0.0).unwrap();
        let refused = Outcome::Early(Early::InvalidIdentity);
        let answer = denial(refused, Status::Unauthorized);
        // One instant: one second of the budget.
        let now = Instant::now();
        for _ in 0..record::DENIALS_PER_SECOND + 30 {
            records.decision(&answer, &HEADERS, now);
        }
        drop(records);
        let kept = kept.lock().unwrap();
        let decisions = kept
            .iter()
            .filter(|(_, l)| l.contains(": decision "))
            .count();
        assert_eq!(decisions, record::DENIALS_PER_SECOND as usize);
        let notes: Vec<&String> = kept
            .iter()
            .map(|(_, l)| l)
            .filter(|l| l.contains("left out"))
            .collect();
        assert_eq!(
            notes,
            [
                "nmp_authz::decision: denial records left out over the per-reason budget \
              reason=\"invalid_identity\" suppressed=30 per_second=100"
            ]
        );
    }

    #[test]
    fn a_blocked_log_never_holds_up_a_decision_and_what_is_dropped_is_counted() {
        let (stuck_tx, stuck) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let gate = Mutex::new(Some((stuck_tx, released)));
        let kept = Kept::default();
        let into = kept.clone();
        let sink: Sink = Arc::new(move |level, line: &str| {
            // The first write blocks until the test releases it, as a stderr nobody reads.
            let first = gate.lock().unwrap().take();
            if let Some((stuck, released)) = first {
                let _ = stuck.send(());
                let _ = released.recv();
            }
            into.lock().unwrap().push((level, line.to_owned()));
        });
        let records = Records::start(sink, 1.0).unwrap();
        let answer = denial(Outcome::Decided(Reason::NotPermitted), Status::Forbidden);
        records.decision(&answer, &HEADERS, Instant::now());
        stuck
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer takes the first line and is stuck writing it");
        let allow = Answer {
            action: Action::Continue {
                set: Vec::new(),
                remove: Vec::new(),
            },
            status: Status::Ok,
            outcome: Outcome::Decided(Reason::WorkspacePermission),
            facts: Vec::new(),
        };
        let extra = 10;
        let dropped: u64 = (0..QUEUE_LINES + extra)
            .map(|_| records.decision(&allow, &HEADERS, Instant::now()))
            .sum();
        assert_eq!(dropped, extra as u64);
        assert_eq!(records.dropped(), extra as u64);
        release.send(()).unwrap();
        drop(records);
        let kept = kept.lock().unwrap();
        let written = kept.iter().filter(|(level, _)| *level == Level::Info);
        assert_eq!(written.count(), 1 + QUEUE_LINES, "every line queued");
        let notes: Vec<&String> = kept
            .iter()
            .filter(|(level, _)| *level == Level::Warn)
            .map(|(_, line)| line)
            .collect();
        let [note] = notes[..] else {
            panic!("one note: {notes:?}")
        };
        assert!(
            note.starts_with("nmp_authz::log: decision records dropped")
                && note.ends_with(" dropped=10 total=10"),
            "{note}"
        );
    }

    #[test]
    fn stopping_gives_up_on_a_log_that_stays_blocked() {
        let (stuck_tx, stuck) = mpsc::channel::<()>();
        // Held to the end of the test: the sink stays blocked until then.
        let (_release, released) = mpsc::channel::<()>();
        let gate = Mutex::new(Some((stuck_tx, released)));
        let sink: Sink = Arc::new(move |_, _: &str| {
            let first = gate.lock().unwrap().take();
            if let Some((stuck, released)) = first {
                let _ = stuck.send(());
                let _ = released.recv();
            }
        });
        let records = Records::start(sink, 1.0).unwrap();
        let answer = denial(Outcome::Decided(Reason::NotPermitted), Status::Forbidden);
        records.decision(&answer, &HEADERS, Instant::now());
        stuck.recv_timeout(Duration::from_secs(10)).unwrap();
        let started = Instant::now();
        drop(records);
        assert!(started.elapsed() < STOP_WAIT + Duration::from_secs(5));
    }

    #[test]
    fn configurations_share_one_set_of_records_released_with_the_last() {
        let (sink, _) = keeping();
        let a = Records::shared(sink.clone()).unwrap();
        let b = Records::shared(sink).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none());
    }
}
