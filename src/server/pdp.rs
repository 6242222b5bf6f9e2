//! NMP's policy decision point for platform services (`allow`, `has_permissions`, `has_role`),
//! shared by its gRPC face (`nmp_authz.v1.PolicyDecision`) and its HTTP face
//! (`POST /apis/auth/v2/authz/{entrypoint}`, NMP's `{"input": ...}` → `{"result": ...}`).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::identity::{self, IdentityError};
use crate::policy::{CompiledPolicy, Principal};

use super::State;

/// Why a PDP call was refused, with the HTTP status that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub detail: String,
}

impl Refused {
    fn new(status: u16, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

/// The caller must be a `service:` principal (any caller when authorization is off); the
/// answer is the policy to decide with.
pub async fn authorize_caller(
    state: &State,
    headers: &hyper::HeaderMap,
) -> Result<Arc<CompiledPolicy>, Refused> {
    let policy = state
        .policy
        .load_full()
        .ok_or_else(|| Refused::new(503, "Authorization policy data is not available"))?;
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

/// The principal an input describes; invalid ids, emails, groups or scopes are a 400.
pub fn input_principal(
    principal_id: Option<String>,
    principal_email: Option<String>,
    principal_groups: Vec<String>,
    scopes: Vec<String>,
) -> Result<Principal, Refused> {
    let principal = Principal {
        id: principal_id,
        email: principal_email.filter(|e| !e.is_empty()),
        groups: principal_groups,
        scopes,
    };
    identity::validate_principal(&principal).map_err(|e| Refused::new(400, e.detail()))?;
    Ok(principal)
}

/// NMP's input document, all entrypoints' fields together (each reads its own).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Input {
    principal_id: Option<String>,
    principal_email: Option<String>,
    principal_groups: Vec<String>,
    method: String,
    path: String,
    scopes: Vec<String>,
    workspace: String,
    permissions: Vec<String>,
    role: String,
}

#[derive(Debug, Deserialize)]
struct Body {
    input: Input,
}

/// Answers `entrypoint` for a JSON body `{"input": {...}}` with NMP's `{"result": {...}}`.
pub fn answer(policy: &CompiledPolicy, entrypoint: &str, body: &[u8]) -> Result<Json, Refused> {
    if !matches!(entrypoint, "allow" | "has_permissions" | "has_role") {
        return Err(Refused::new(
            400,
            format!("Unknown entrypoint {entrypoint:?} (allow, has_permissions, has_role)"),
        ));
    }
    let Body { input } = serde_json::from_slice(body)
        .map_err(|e| Refused::new(400, format!("Invalid request body: {e}")))?;
    let scopes = if entrypoint == "allow" {
        input.scopes
    } else {
        Vec::new()
    };
    let principal = input_principal(
        input.principal_id,
        input.principal_email,
        input.principal_groups,
        scopes,
    )?;
    let result = match entrypoint {
        "allow" => {
            let allowed = policy
                .allow(Some(&principal), &input.method, &input.path)
                .allowed;
            json!({"allowed": allowed, "headers": {"X-NMP-Authorized": allowed.to_string()}})
        }
        "has_permissions" => json!({
            "allowed": policy.has_permissions(&principal, &input.workspace, &input.permissions)
        }),
        _ => json!({"has_role": policy.has_role(&principal, &input.workspace, &input.role)}),
    };
    Ok(json!({ "result": result }))
}
