//! NMP's policy decision point for platform services (`allow`, `has_permissions`, `has_role`),
//! shared by its faces: gRPC (`nmp_authz.v1.PolicyDecision`), NMP's HTTP API on the HTTP port
//! and on the PDP listener, at both of the paths NMP's `AuthClient` calls —
//! `/apis/auth/v2/authz/{entrypoint}` (provider `embedded`) and `/v1/data/authz/{entrypoint}`
//! (provider `opa`, OPA's REST API) — with `{"input": ...}` in and `{"result": ...}` out.
//! Inputs are evaluated as NMP's PDP evaluates them (`policy::pdp`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Map, Value as Json, json};

use crate::identity::{self, IdentityError};
use crate::policy::CompiledPolicy;
use crate::policy::pdp::{self, Entrypoint};

use super::State;

/// NMP's PDP paths: the embedded provider's, and OPA's REST API's.
pub(crate) const PATH_PREFIXES: [&str; 2] = ["/apis/auth/v2/authz/", "/v1/data/authz/"];

/// The entrypoint named by a PDP path, if `path` is one.
pub(crate) fn entrypoint_of(path: &str) -> Option<&str> {
    PATH_PREFIXES.iter().find_map(|p| path.strip_prefix(p))
}

/// Why a PDP call was refused, with the HTTP status that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub detail: String,
}

impl Refused {
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

/// The policy the PDP decides with right now.
#[derive(Debug, Clone)]
pub struct Usable {
    policy: Arc<CompiledPolicy>,
    /// A source has never loaded: only questions about `service:` principals are answered.
    services_only: bool,
}

impl Usable {
    /// Answers `entrypoint` for NMP's `input` object.
    pub fn answer(
        &self,
        entrypoint: Entrypoint,
        input: &Map<String, Json>,
    ) -> Result<pdp::Answer, Refused> {
        if self.services_only && !pdp::asks_about_service(input) {
            return Err(Refused::new(
                503,
                "Authorization policy data is still loading: only questions about service \
                 principals are answered until it has",
            ));
        }
        Ok(pdp::answer(&self.policy, entrypoint, input))
    }
}

/// The policy to decide with. None loaded, or stale, is a 503 on every face, as for Check: a
/// PDP that answered from stale data would hand out access the gateway already refuses.
/// While a source has never loaded (NMP's bundle, while NMP starts), what has loaded answers
/// questions about `service:` principals only: NMP's services must be able to authorize the
/// calls that build that very bundle (NMP's own PDP answers from its static catalog then).
pub(crate) fn current_policy(state: &State) -> Result<Usable, Refused> {
    let policy = state
        .policy
        .load_full()
        .ok_or_else(|| Refused::new(503, "Authorization policy data is not available"))?;
    let services_only = state.auth_enabled && state.bootstrapping.load(Ordering::Relaxed);
    if state.auth_enabled && !services_only && state.stale.load(Ordering::Relaxed) {
        return Err(Refused::new(503, "Authorization policy data is stale"));
    }
    Ok(Usable {
        policy,
        services_only,
    })
}

/// On the HTTP and gRPC ports: the caller identifies like any request (a bearer token, or
/// trusted principal headers) and must be a `service:` principal (anyone when authorization
/// is off).
pub(crate) async fn authorize_caller(
    state: &State,
    headers: &hyper::HeaderMap,
) -> Result<Usable, Refused> {
    let policy = current_policy(state)?;
    if !state.auth_enabled {
        return Ok(policy);
    }
    // Values that are not text are no credential.
    let credentials = identity::Credentials::from_headers(
        headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
    );
    let identity = match credentials {
        Ok(credentials) => state.identify(&credentials, None).await,
        Err(refused) => Err(refused),
    };
    match identity {
        Ok(Some(caller)) if caller.principal.is_service() => Ok(policy),
        Ok(Some(_)) => Err(Refused::new(
            403,
            "The PDP API is for service principals only",
        )),
        Ok(None) => Err(Refused::new(401, "Not authenticated")),
        Err(IdentityError::InvalidPrincipal { detail }) => Err(Refused::new(400, detail)),
        Err(rejected) => Err(Refused::new(401, rejected.detail())),
    }
}

/// On the PDP listener: the caller is who its `X-NMP-Principal-Id` header says, as NMP's own
/// middleware guards its PDP routes (NMP's `AuthClient` sends that header and no token). Only
/// `service:` principals may ask: none is a 401, anyone else a 403, with NMP's bodies. The
/// listener must be reachable by platform services only (a Unix socket's permissions, or a
/// network policy): it believes that header from whoever can connect.
pub(crate) fn authorize_service_header(
    state: &State,
    headers: &hyper::HeaderMap,
) -> Result<Usable, Refused> {
    let id = match headers
        .get_all("x-nmp-principal-id")
        .iter()
        .collect::<Vec<_>>()[..]
    {
        [] => "",
        [one] => one
            .to_str()
            .map_err(|_| Refused::new(400, "X-NMP-Principal-Id is not text"))?,
        // Whichever copy we read, another hop might read the other.
        _ => return Err(Refused::new(400, "Repeated X-NMP-Principal-Id header")),
    };
    if !id.starts_with("service:") {
        let status = if id.is_empty() { 401 } else { 403 };
        let detail = if id.is_empty() {
            "Unauthorized"
        } else {
            "Forbidden"
        };
        return Err(Refused::new(status, detail));
    }
    // NMP parses the header (trimmed) before it serves the call; so do we.
    let id = id.trim();
    if !identity::is_carriable_id(id) {
        return Err(Refused::new(
            400,
            "X-NMP-Principal-Id contains invalid characters; allowed: alphanumeric, @, ., -, _, :, +, /",
        ));
    }
    current_policy(state)
}

/// The entrypoint a path names, or a 400 listing the valid ones.
pub fn entrypoint(name: &str) -> Result<Entrypoint, Refused> {
    Entrypoint::parse(name).ok_or_else(|| {
        Refused::new(
            400,
            format!("Invalid entrypoint: {name:?} (valid: allow, has_permissions, has_role)"),
        )
    })
}

/// Answers a JSON body `{"input": {...}}` with NMP's `{"result": {...}}`.
pub fn answer(policy: &Usable, entrypoint: Entrypoint, body: &[u8]) -> Result<Json, Refused> {
    #[derive(serde::Deserialize)]
    struct Body {
        input: Map<String, Json>,
    }
    let Body { input } = serde_json::from_slice(body)
        .map_err(|e| Refused::new(400, format!("Invalid request body: {e}")))?;
    Ok(json!({ "result": policy.answer(entrypoint, &input)?.to_json() }))
}
