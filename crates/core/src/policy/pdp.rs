//! NMP's policy decision point entrypoints (`allow`, `has_permissions`, `has_role`) over a
//! [`CompiledPolicy`], with NMP's input documents read the way NMP's own policy reads them
//! (`extract.rego`): no validation of ids, emails or groups (NMP's PDP evaluates whatever it is
//! given: `auth0|abc` is an ordinary id, `""` identifies nobody), each field taken from the
//! direct form (`principal_id`, `method`, ...) when it is present and not `false`, else from
//! the Envoy form (`attributes.request.http`). Pure: no I/O.
//!
//! One deliberate difference: a field of the wrong JSON type (a number, `null`, an object, a
//! list holding something other than strings, ...) makes the answer a denial. NMP's engine
//! evaluates those with Rego's type-error rules (a `null` id counts as "authenticated"; a
//! string where a list belongs is ignored), which no NMP client sends and no operator should
//! depend on.

use serde_json::{Map, Value as Json, json};

use super::{CompiledPolicy, Principal};

/// One of NMP's three PDP entrypoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entrypoint {
    Allow,
    HasPermissions,
    HasRole,
}

impl Entrypoint {
    pub const ALL: [Entrypoint; 3] = [
        Entrypoint::Allow,
        Entrypoint::HasPermissions,
        Entrypoint::HasRole,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Entrypoint::Allow => "allow",
            Entrypoint::HasPermissions => "has_permissions",
            Entrypoint::HasRole => "has_role",
        }
    }

    /// The answer NMP gives when its rules grant nothing.
    pub fn denial(self) -> Answer {
        match self {
            Entrypoint::Allow => Answer::Allow(false),
            Entrypoint::HasPermissions => Answer::HasPermissions(false),
            Entrypoint::HasRole => Answer::HasRole(false),
        }
    }
}

/// An entrypoint's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Allow(bool),
    HasPermissions(bool),
    HasRole(bool),
}

impl Answer {
    /// True when the answer grants what was asked.
    pub fn granted(self) -> bool {
        match self {
            Answer::Allow(b) | Answer::HasPermissions(b) | Answer::HasRole(b) => b,
        }
    }

    /// NMP's `result` object: `{"allowed", "headers": {"X-NMP-Authorized"}}`, `{"allowed"}` or
    /// `{"has_role"}`.
    pub fn to_json(self) -> Json {
        match self {
            Answer::Allow(allowed) => {
                json!({"allowed": allowed, "headers": {"X-NMP-Authorized": allowed.to_string()}})
            }
            Answer::HasPermissions(allowed) => json!({ "allowed": allowed }),
            Answer::HasRole(has_role) => json!({ "has_role": has_role }),
        }
    }
}

/// True when the input asks about a `service:` principal (by its id, as every `service:` rule
/// reads it).
pub fn asks_about_service(input: &Map<String, Json>) -> bool {
    let extract = Extract { input };
    extract
        .direct("principal_id")
        .or_else(|| extract.header("x-nmp-principal-id", "X-NMP-Principal-Id"))
        .and_then(Json::as_str)
        .is_some_and(|id| id.starts_with("service:"))
}

/// A field holds a JSON type NMP's clients never send there.
#[derive(Debug)]
struct WrongType;

/// Answers `entrypoint` for NMP's `input` object.
pub fn answer(
    policy: &CompiledPolicy,
    entrypoint: Entrypoint,
    input: &Map<String, Json>,
) -> Answer {
    read_and_answer(policy, entrypoint, input).unwrap_or_else(|WrongType| entrypoint.denial())
}

fn read_and_answer(
    policy: &CompiledPolicy,
    entrypoint: Entrypoint,
    input: &Map<String, Json>,
) -> Result<Answer, WrongType> {
    let extract = Extract { input };
    let principal = extract.principal(entrypoint == Entrypoint::Allow)?;
    Ok(match entrypoint {
        Entrypoint::Allow => {
            let method = extract.method()?.unwrap_or_default();
            // An absent path is no path NMP's patterns match; `""` decides the same way.
            let path = extract.path()?.unwrap_or_default();
            Answer::Allow(policy.allow(principal.as_ref(), method, path).allowed)
        }
        Entrypoint::HasPermissions => {
            let workspace = optional_str(input.get("workspace"))?;
            let permissions = optional_strings(input.get("permissions"))?;
            // Without a workspace or a permission list only NMP's PlatformAdmin rule can hold.
            Answer::HasPermissions(principal.is_some_and(|p| match (workspace, permissions) {
                (Some(workspace), Some(permissions)) => {
                    policy.has_permissions(&p, workspace, &permissions)
                }
                _ => policy.is_platform_admin(&p),
            }))
        }
        Entrypoint::HasRole => {
            let workspace = optional_str(input.get("workspace"))?;
            let role = optional_str(input.get("role"))?;
            Answer::HasRole(match (principal, workspace, role) {
                (Some(p), Some(workspace), Some(role)) => policy.has_role(&p, workspace, role),
                _ => false,
            })
        }
    })
}

/// Rego's test of a value in a rule body: defined and not `false`.
fn truthy(value: Option<&Json>) -> Option<&Json> {
    value.filter(|v| **v != Json::Bool(false))
}

fn optional_str(value: Option<&Json>) -> Result<Option<&str>, WrongType> {
    match value {
        None => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(_) => Err(WrongType),
    }
}

fn optional_strings(value: Option<&Json>) -> Result<Option<Vec<&str>>, WrongType> {
    match value {
        None => Ok(None),
        Some(Json::Array(items)) => items
            .iter()
            .map(|item| item.as_str().ok_or(WrongType))
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(WrongType),
    }
}

/// `extract.rego`: each value from the direct form, else from Envoy's `attributes` form.
struct Extract<'a> {
    input: &'a Map<String, Json>,
}

impl<'a> Extract<'a> {
    fn direct(&self, key: &str) -> Option<&'a Json> {
        truthy(self.input.get(key))
    }

    fn http(&self) -> Option<&'a Json> {
        self.input.get("attributes")?.get("request")?.get("http")
    }

    /// A request header of the Envoy form, under either spelling NMP's policy reads.
    fn header(&self, lower: &str, mixed: &str) -> Option<&'a Json> {
        let headers = self.http()?.get("headers")?;
        truthy(headers.get(lower)).or_else(|| truthy(headers.get(mixed)))
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, WrongType> {
        match self.direct(key).or_else(|| truthy(self.http()?.get(key))) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(_) => Err(WrongType),
        }
    }

    fn method(&self) -> Result<Option<&'a str>, WrongType> {
        self.string("method")
    }

    fn path(&self) -> Result<Option<&'a str>, WrongType> {
        self.string("path")
    }

    /// The caller, or `None` when no principal id is given (NMP then has no applicable
    /// principals at all: an email or groups alone identify nobody).
    fn principal(&self, with_scopes: bool) -> Result<Option<Principal>, WrongType> {
        let id = match self
            .direct("principal_id")
            .or_else(|| self.header("x-nmp-principal-id", "X-NMP-Principal-Id"))
        {
            None => return Ok(None),
            Some(Json::String(id)) => id,
            Some(_) => return Err(WrongType),
        };
        let email = match self
            .direct("principal_email")
            .or_else(|| self.header("x-nmp-principal-email", "X-NMP-Principal-Email"))
        {
            None => None,
            Some(Json::String(email)) => Some(email.clone()),
            Some(_) => return Err(WrongType),
        };
        let groups = match self.direct("principal_groups") {
            Some(list) => owned(optional_strings(Some(list))?),
            None => match self.header("x-nmp-principal-groups", "X-NMP-Principal-Groups") {
                // Split as NMP's policy splits it: on commas, nothing trimmed.
                Some(Json::String(joined)) => joined.split(',').map(str::to_owned).collect(),
                Some(_) => return Err(WrongType),
                None => Vec::new(),
            },
        };
        let scopes = if with_scopes {
            match self.direct("scopes") {
                Some(list) => owned(optional_strings(Some(list))?),
                None => match self.header("x-nmp-scopes", "X-NMP-Scopes") {
                    Some(Json::String(joined)) => joined.split(' ').map(str::to_owned).collect(),
                    Some(_) => return Err(WrongType),
                    None => Vec::new(),
                },
            }
        } else {
            Vec::new()
        };
        Ok(Some(Principal {
            id: Some(id.clone()),
            email: email.filter(|e| !e.is_empty()),
            groups,
            scopes,
        }))
    }
}

fn owned(strings: Option<Vec<&str>>) -> Vec<String> {
    strings
        .unwrap_or_default()
        .into_iter()
        .map(str::to_owned)
        .collect()
}
