//! The one answer every face renders (gRPC Check, the HTTP authorization endpoint, `explain`,
//! an in-process proxy filter): a [`Verdict`] with its [`Outcome`] (why), [`Status`] (the HTTP
//! status and the gRPC code, from one table), the principal decided on and the decision's
//! facts. How a face spells it (a `CheckResponse`, an HTTP answer) is the face's business.

use std::borrow::Cow;
use std::sync::Arc;

use crate::identity::{Identity, IdentityError};
use crate::policy::{CompiledPolicy, Decision, Principal, Reason};
use crate::request_path;

/// The status of an answer: the HTTP status a client gets, and the gRPC code that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok,
    BadRequest,
    Unauthorized,
    Forbidden,
    Unavailable,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Ok,
        Status::BadRequest,
        Status::Unauthorized,
        Status::Forbidden,
        Status::Unavailable,
    ];

    pub fn http(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::Unavailable => 503,
        }
    }

    /// [`Self::http`] as text, for metric labels and stats names (no formatting per request).
    pub fn http_label(self) -> &'static str {
        match self {
            Status::Ok => "200",
            Status::BadRequest => "400",
            Status::Unauthorized => "401",
            Status::Forbidden => "403",
            Status::Unavailable => "503",
        }
    }

    /// The `google.rpc.Code` that says the same: OK, INVALID_ARGUMENT, UNAUTHENTICATED,
    /// PERMISSION_DENIED, UNAVAILABLE.
    pub fn grpc_code(self) -> i32 {
        match self {
            Status::Ok => 0,
            Status::BadRequest => 3,
            Status::Unauthorized => 16,
            Status::Forbidden => 7,
            Status::Unavailable => 14,
        }
    }

    /// The status an HTTP status code names, if it is one of these.
    pub fn from_http(code: u16) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.http() == code)
    }
}

crate::table_enum! {
    /// An answer given before the policy decides.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Early: Status {
        AuthDisabled = ("auth_disabled", Status::Ok, "authorization is off"),
        MalformedRequest = ("malformed_request", Status::BadRequest, "malformed request"),
        AmbiguousRequest = (
            "ambiguous_request",
            Status::BadRequest,
            "a path or method that could be read two ways"
        ),
        InvalidPrincipal = (
            "invalid_principal",
            Status::BadRequest,
            "a principal the x-nmp-* headers cannot carry"
        ),
        InvalidIdentity = ("invalid_identity", Status::Unauthorized, "a refused credential"),
        PolicyUnavailable = (
            "policy_unavailable",
            Status::Unavailable,
            "no policy data"
        ),
        PolicyStale = ("policy_stale", Status::Unavailable, "stale policy data"),
    }
}

/// Why a request was answered as it was: before a decision, or the policy's [`Reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Early(Early),
    Decided(Reason),
}

impl Outcome {
    /// How many outcomes there are ([`Self::index`] is below it).
    pub const COUNT: usize = Early::ALL.len() + Reason::ALL.len();

    /// Every outcome, each once.
    pub fn all() -> impl Iterator<Item = Outcome> {
        let early = Early::ALL.iter().map(|e| Outcome::Early(*e));
        early.chain(Reason::ALL.iter().map(|r| Outcome::Decided(*r)))
    }

    /// A dense index (`0..COUNT`), for per-outcome counters.
    pub fn index(self) -> usize {
        match self {
            Outcome::Early(e) => e as usize,
            Outcome::Decided(r) => Early::ALL.len() + r as usize,
        }
    }

    pub fn allowed(self) -> bool {
        match self {
            Outcome::Early(e) => e == Early::AuthDisabled,
            Outcome::Decided(r) => r.allows(),
        }
    }

    /// The stable name (metrics, logs, dynamic metadata).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Early(e) => e.as_str(),
            Outcome::Decided(r) => r.as_str(),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Outcome::Early(e) => e.describe(),
            Outcome::Decided(r) => r.describe(),
        }
    }

    /// The status this outcome answers with. A policy denial of a caller that presented no
    /// identity is a 401 (authenticate, then ask again), of one that did a 403; no endpoints
    /// loaded is the policy data's fault: 503.
    pub fn status(self, identified: bool) -> Status {
        match self {
            Outcome::Early(e) => e.kind(),
            Outcome::Decided(r) if r.allows() => Status::Ok,
            Outcome::Decided(Reason::NoEndpointsLoaded) => Status::Unavailable,
            Outcome::Decided(_) if identified => Status::Forbidden,
            Outcome::Decided(_) => Status::Unauthorized,
        }
    }
}

/// The answer to one request, whatever face asked.
#[derive(Debug, Clone)]
pub struct Verdict<'p> {
    pub outcome: Outcome,
    pub status: Status,
    /// The caller decided on, when one was established.
    pub principal: Option<Arc<Principal>>,
    /// The path decided on (percent-decoded once, the query kept), when the request-path rule
    /// accepted it.
    pub path: Option<Cow<'p, str>>,
    /// The policy's decision, and the policy that made it, when the policy was consulted.
    pub decision: Option<Decision<'p>>,
    pub policy: Option<&'p CompiledPolicy>,
    /// Groups of the caller's token that the headers cannot carry, left out of the decision.
    pub dropped_groups: usize,
    /// The client-facing sentence of a denial (`{"detail": ...}`); empty on allow.
    pub detail: Cow<'static, str>,
    /// A bearer token was refused: the 401 says `error="invalid_token"` with the detail.
    pub token_refused: bool,
}

impl<'p> Verdict<'p> {
    /// An answer given before any decision (`principal` when one was established).
    pub fn early(early: Early, detail: impl Into<Cow<'static, str>>) -> Self {
        Verdict {
            outcome: Outcome::Early(early),
            status: early.kind(),
            principal: None,
            path: None,
            decision: None,
            policy: None,
            dropped_groups: 0,
            detail: detail.into(),
            token_refused: false,
        }
    }

    /// The refusal of a credential: 400 for a principal the headers cannot carry, else 401.
    pub fn refused(error: &IdentityError) -> Self {
        let invalid = matches!(error, IdentityError::InvalidPrincipal { .. });
        let mut verdict = Self::early(
            if invalid {
                Early::InvalidPrincipal
            } else {
                Early::InvalidIdentity
            },
            error.detail().to_owned(),
        );
        verdict.token_refused = !invalid;
        verdict
    }

    /// `policy`'s decision on `path` for `principal`.
    pub fn decided(
        decision: Decision<'p>,
        policy: &'p CompiledPolicy,
        principal: Option<Arc<Principal>>,
        path: Cow<'p, str>,
    ) -> Self {
        let outcome = Outcome::Decided(decision.reason);
        let status = outcome.status(principal.is_some());
        let detail: Cow<'static, str> = match status {
            Status::Ok => "".into(),
            Status::Unavailable => "Authorization policy data has no endpoints".into(),
            Status::Unauthorized => "Not authenticated".into(),
            _ => format!("Permission denied: {}", decision.reason.describe()).into(),
        };
        Verdict {
            outcome,
            status,
            principal,
            path: Some(path),
            decision: Some(decision),
            policy: Some(policy),
            dropped_groups: 0,
            detail,
            token_refused: false,
        }
    }

    pub fn allowed(&self) -> bool {
        self.status == Status::Ok
    }
}

/// What the checks before identity make of a request (every face runs them in this order, then
/// identifies the caller, then [`conclude`]s).
#[derive(Debug)]
pub enum Admission<'a> {
    /// Answered already: a malformed or ambiguous request, or stale policy data.
    Answered(Verdict<'static>),
    /// Authorization is off: allowed ([`Early::AuthDisabled`]), naming the caller if the host
    /// can.
    AuthDisabled,
    /// To be decided, on this path (the request-path rule's reading of it).
    Decide(Cow<'a, str>),
}

/// The checks before identity: a method and a path at all, authorization on, a path and method
/// that read one way only (README "Request paths"), policy data not stale.
pub fn admit<'a>(method: &str, path: &'a str, auth_enabled: bool, stale: bool) -> Admission<'a> {
    if method.is_empty() || !path.starts_with('/') {
        let detail = "Malformed request: no HTTP method or path";
        return Admission::Answered(Verdict::early(Early::MalformedRequest, detail));
    }
    if !auth_enabled {
        return Admission::AuthDisabled;
    }
    // Decide on the path as the upstream will read it, or refuse one it could read two ways.
    // HTTP methods are case-sensitive: `get` is not `GET`, and an upstream that upper-cases it
    // would serve what was decided as something else.
    let path = match request_path::canonical(path) {
        Ok(path) if request_path::is_method_token(method) => path,
        Ok(_) => {
            let detail = "Ambiguous request: the method must be upper case";
            return Admission::Answered(Verdict::early(Early::AmbiguousRequest, detail));
        }
        Err(refusal) => {
            return Admission::Answered(Verdict::early(Early::AmbiguousRequest, refusal));
        }
    };
    if stale {
        let detail = "Authorization policy data is stale";
        return Admission::Answered(Verdict::early(Early::PolicyStale, detail));
    }
    Admission::Decide(path)
}

/// The answer to an admitted request: 503 without policy data, the refusal of a credential,
/// else `policy`'s decision for the caller `identify` found.
pub fn conclude<'p>(
    policy: Option<&'p CompiledPolicy>,
    identity: Result<Option<Identity>, IdentityError>,
    method: &str,
    path: Cow<'p, str>,
) -> Verdict<'p> {
    let Some(policy) = policy else {
        let detail = "Authorization policy data is not available";
        return Verdict::early(Early::PolicyUnavailable, detail);
    };
    let (principal, dropped_groups) = match identity {
        Ok(found) => found.map_or((None, 0), |i| (Some(i.principal), i.dropped_groups)),
        Err(refused) => return Verdict::refused(&refused),
    };
    let decision = policy.allow(principal.as_deref(), method, &path);
    let mut verdict = Verdict::decided(decision, policy, principal, path);
    verdict.dropped_groups = dropped_groups;
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_dense_and_named_once() {
        let all: Vec<Outcome> = Outcome::all().collect();
        assert_eq!(all.len(), Outcome::COUNT);
        for (i, outcome) in all.iter().enumerate() {
            assert_eq!(outcome.index(), i);
        }
        let mut names: Vec<&str> = all.iter().map(|o| o.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Outcome::COUNT, "a name used twice");
    }

    #[test]
    fn status_labels_are_the_http_codes() {
        for status in Status::ALL {
            assert_eq!(status.http_label(), status.http().to_string());
            assert_eq!(Status::from_http(status.http()), Some(status));
        }
    }

    #[test]
    fn statuses_follow_the_outcome_and_identity() {
        let allow = Outcome::Decided(Reason::WorkspacePermission);
        assert_eq!(
            (allow.status(true), allow.status(false)),
            (Status::Ok, Status::Ok)
        );
        let deny = Outcome::Decided(Reason::NotPermitted);
        assert_eq!(deny.status(true), Status::Forbidden);
        assert_eq!(deny.status(false), Status::Unauthorized);
        let empty = Outcome::Decided(Reason::NoEndpointsLoaded);
        assert_eq!(empty.status(true), Status::Unavailable);
        assert_eq!(
            Outcome::Early(Early::PolicyStale).status(true),
            Status::Unavailable
        );
        for status in Status::ALL {
            assert_eq!(Status::from_http(status.http()), Some(status));
        }
        assert!(Outcome::all().all(|o| o.allowed() == (o.status(true) == Status::Ok)));
    }
}
