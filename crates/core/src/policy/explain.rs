//! Why a request is allowed or denied: [`CompiledPolicy::explain`] runs the same evaluation as
//! [`CompiledPolicy::allow`] with a [`Recorder`] that writes down what each rule looked at
//! (endpoint, workspace, scope check, the roles that granted or the permission that was
//! missing). `allow` passes `()`, which records nothing, so the decision path stays as it is.

use std::fmt;

use serde::Serialize;

use super::Principal;
use super::compile::{CompiledPolicy, PermId, RoleId};
use super::decide::{Facts, Grant, Recorder, ScopeCheck};

/// Why a request is allowed or denied, in the policy's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub allowed: bool,
    /// The decision reason ([`super::Reason::as_str`]).
    pub reason: &'static str,
    /// The reason as a sentence.
    pub rule: &'static str,
    /// Set when a deny rule fired (it overrides every allow rule).
    pub deny_rule: Option<&'static str>,
    pub method: String,
    /// Without its query, which is never recorded (it may carry a token).
    pub path: String,
    /// The endpoint pattern that won.
    pub endpoint: Option<String>,
    /// Other patterns that match the path too and lost the tie-break.
    pub also_matched: Vec<String>,
    /// `-` is all workspaces.
    pub workspace: Option<String>,
    /// The matched endpoint's entry for the method; `None` when it lists no such method.
    pub requires: Option<Requirement>,
    /// The caller's id, email and groups the bindings are looked up under.
    pub principals: Vec<String>,
    /// The principal bound to PlatformAdmin in `system`, when that allowed the request.
    pub platform_admin: Option<String>,
    pub scope_check: Option<ScopeReport>,
    /// Roles held in each workspace a permission was looked up in.
    pub roles: Vec<RoleReport>,
    pub permission_checks: Vec<PermissionReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirement {
    /// `None`: the entry has no `permissions` key (differs from an empty list).
    pub permissions: Option<Vec<String>>,
    pub scopes: Vec<String>,
    pub callers: Option<Vec<&'static str>>,
    pub deny: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScopeReport {
    pub passed: bool,
    /// `no_platform_scopes`, `none_required`, `matched` or `missing`.
    pub result: &'static str,
    /// The caller's platform scopes (those containing `:`).
    pub token_scopes: Vec<String>,
    pub required: Vec<String>,
    pub matched: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleReport {
    pub principal: String,
    /// `id`, `email`, `group`, `wildcard` (`*`) or `service_default` (ServiceSystem for a
    /// `service:` id without bindings there).
    pub via: &'static str,
    pub workspace: String,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PermissionReport {
    pub principal: String,
    pub workspace: String,
    pub permission: String,
    /// `None`: missing.
    pub granted_by: Option<GrantReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantReport {
    pub principal: String,
    pub role: String,
}

/// What a permission no document names is called in an explanation (only `*` grants it).
const UNNAMED_PERMISSION: &str = "(a permission no policy document names)";

struct Trace<'p> {
    policy: &'p CompiledPolicy,
    out: Explanation,
}

impl CompiledPolicy {
    /// [`Self::allow`] with the reasons: the same evaluation, recorded.
    pub fn explain(&self, principal: Option<&Principal>, method: &str, path: &str) -> Explanation {
        let base_path = path.split('?').next().unwrap_or_default();
        let mut trace = Trace {
            policy: self,
            out: Explanation {
                allowed: false,
                reason: "",
                rule: "",
                deny_rule: None,
                method: method.into(),
                path: base_path.into(),
                endpoint: None,
                also_matched: Vec::new(),
                workspace: None,
                requires: None,
                principals: Vec::new(),
                platform_admin: None,
                scope_check: None,
                roles: Vec::new(),
                permission_checks: Vec::new(),
            },
        };
        let decision = self.evaluate(principal, method, path, &mut trace);
        let mut out = trace.out;
        out.allowed = decision.allowed;
        out.reason = decision.reason.as_str();
        out.rule = decision.reason.describe();
        out.deny_rule = decision
            .reason
            .is_deny_rule()
            .then(|| decision.reason.as_str());
        out.endpoint = decision.endpoint.map(str::to_string);
        out.workspace = decision.workspace;
        out.also_matched = self
            .matcher
            .all_matches(base_path)
            .into_iter()
            .map(|i| self.endpoints[i].pattern.to_string())
            .filter(|p| out.endpoint.as_deref() != Some(p.as_str()))
            .collect();
        if let Some(principal) = principal {
            if let Some(scopes) = &mut out.scope_check {
                scopes.token_scopes = principal
                    .scopes
                    .iter()
                    .filter(|s| s.contains(':'))
                    .cloned()
                    .collect();
            }
            out.roles = self.role_reports(principal, &out);
        }
        out
    }

    /// The roles of the caller's principals (and of `*`) in the request's workspace and in
    /// every workspace a permission was looked up in.
    fn role_reports(&self, principal: &Principal, out: &Explanation) -> Vec<RoleReport> {
        let mut workspaces: Vec<&str> = out
            .workspace
            .iter()
            .map(String::as_str)
            .filter(|ws| *ws != "-")
            .collect();
        for check in &out.permission_checks {
            if !workspaces.contains(&check.workspace.as_str()) {
                workspaces.push(&check.workspace);
            }
        }
        let facts = self.bare_facts(principal);
        let mut reports = Vec::new();
        for workspace in workspaces {
            for p in &facts.applicable {
                let explicit = self.explicit_roles(p, workspace);
                let roles = self.effective_roles(&facts, p, workspace);
                if roles.is_empty() {
                    continue;
                }
                let via = if explicit.is_empty() {
                    "service_default"
                } else if principal.id.as_deref() == Some(*p) {
                    "id"
                } else if principal.email.as_deref() == Some(*p) {
                    "email"
                } else {
                    "group"
                };
                reports.push(self.role_report(p, via, workspace, roles));
            }
            let wildcard = self.explicit_roles("*", workspace);
            if !wildcard.is_empty() {
                reports.push(self.role_report("*", "wildcard", workspace, wildcard));
            }
        }
        reports
    }

    fn role_report(
        &self,
        principal: &str,
        via: &'static str,
        workspace: &str,
        roles: &[RoleId],
    ) -> RoleReport {
        RoleReport {
            principal: principal.into(),
            via,
            workspace: workspace.into(),
            roles: roles
                .iter()
                .map(|r| self.role_name(*r).to_string())
                .collect(),
        }
    }

    pub(crate) fn role_name(&self, role: RoleId) -> &str {
        &self.roles[role as usize].name
    }

    fn permission_name(&self, permission: Option<PermId>) -> &str {
        permission
            .and_then(|id| self.permission_names.get(id as usize))
            .map_or(UNNAMED_PERMISSION, |name| name)
    }
}

impl Recorder for Trace<'_> {
    fn facts(&mut self, f: &Facts<'_, '_>) {
        let policy = self.policy;
        self.out.principals = f.applicable.iter().map(|p| p.to_string()).collect();
        self.out.requires = f.entry.map(|entry| Requirement {
            permissions: entry.permissions.as_ref().map(|required| {
                required
                    .iter()
                    .map(|r| {
                        let name = policy.permission_name(r.permission);
                        match &r.workspace {
                            Some(ws) => format!("{ws}/{name}"),
                            None => name.to_string(),
                        }
                    })
                    .collect()
            }),
            scopes: entry.scopes.iter().map(|s| s.to_string()).collect(),
            callers: entry.callers.map(|c| {
                let mut kinds = Vec::new();
                if c.principal {
                    kinds.push("principal");
                }
                if c.service_principal {
                    kinds.push("service_principal");
                }
                kinds
            }),
            deny: entry.deny,
        });
    }

    fn platform_admin(&mut self, principal: &str) {
        self.out.platform_admin = Some(principal.into());
    }

    fn scope(&mut self, required: &[Box<str>], check: ScopeCheck<'_>) {
        let (passed, result, matched) = match check {
            ScopeCheck::NoPlatformScopes => (true, "no_platform_scopes", None),
            ScopeCheck::NoneRequired => (true, "none_required", None),
            ScopeCheck::Matched(s) => (true, "matched", Some(s.to_string())),
            ScopeCheck::Missing => (false, "missing", None),
        };
        self.out.scope_check = Some(ScopeReport {
            passed,
            result,
            token_scopes: Vec::new(),
            required: required.iter().map(|s| s.to_string()).collect(),
            matched,
        });
    }

    fn permission(
        &mut self,
        principal: &str,
        workspace: &str,
        permission: Option<PermId>,
        grant: Option<Grant<'_>>,
    ) {
        let permission = self.policy.permission_name(permission).to_string();
        let report = PermissionReport {
            principal: principal.into(),
            workspace: workspace.into(),
            permission,
            granted_by: grant.map(|g| GrantReport {
                principal: g.principal.into(),
                role: self.policy.role_name(g.role).into(),
            }),
        };
        // The bundle rule and an allow rule may look the same permission up twice.
        if !self.out.permission_checks.contains(&report) {
            self.out.permission_checks.push(report);
        }
    }
}

/// `a, b` or `-` for none.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// The explanation as an operator reads it, one fact per line.
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "reason:      {} ({})", self.reason, self.rule)?;
        writeln!(f, "request:     {} {}", self.method, self.path)?;
        match &self.endpoint {
            Some(endpoint) => writeln!(f, "endpoint:    {endpoint}")?,
            None => writeln!(f, "endpoint:    none matches")?,
        }
        if !self.also_matched.is_empty() {
            writeln!(
                f,
                "also match:  {} (lost the tie-break)",
                list(&self.also_matched)
            )?;
        }
        let workspace = self.workspace.as_deref().unwrap_or("none in the path");
        writeln!(f, "workspace:   {workspace}")?;
        match &self.requires {
            None if self.endpoint.is_some() => {
                writeln!(f, "requires:    (the endpoint lists no {})", self.method)?
            }
            None => {}
            Some(r) => {
                let permissions = match &r.permissions {
                    None => "no permissions key".to_string(),
                    Some(p) if p.is_empty() => "permissions [] (none)".to_string(),
                    Some(p) => format!("permissions {}", p.join(", ")),
                };
                write!(f, "requires:    {permissions}; scopes {}", list(&r.scopes))?;
                if let Some(callers) = &r.callers {
                    write!(f, "; callers {}", callers.join(", "))?;
                }
                if r.deny {
                    write!(f, "; deny: true")?;
                }
                writeln!(f)?;
            }
        }
        writeln!(f, "principals:  {}", list(&self.principals))?;
        if let Some(admin) = &self.platform_admin {
            writeln!(f, "admin:       {admin} holds PlatformAdmin in system")?;
        }
        if let Some(s) = &self.scope_check {
            let how = match s.result {
                "no_platform_scopes" => "passed: the token has no platform scopes".to_string(),
                "none_required" => "passed: the endpoint requires no scope".to_string(),
                "matched" => format!(
                    "passed: {} is one of {}",
                    s.matched.as_deref().unwrap_or_default(),
                    list(&s.required)
                ),
                _ => format!(
                    "FAILED: token scopes {} include none of {}",
                    list(&s.token_scopes),
                    list(&s.required)
                ),
            };
            writeln!(f, "scope check: {how}")?;
        }
        if self.roles.is_empty() && !self.principals.is_empty() && self.platform_admin.is_none() {
            writeln!(f, "roles:       none in {workspace}")?;
        }
        for (i, r) in self.roles.iter().enumerate() {
            let label = if i == 0 { "roles:" } else { "" };
            writeln!(
                f,
                "{label:<12} {} ({}) in {}: {}",
                r.principal,
                r.via.replace('_', " "),
                r.workspace,
                r.roles.join(", ")
            )?;
        }
        for (i, c) in self.permission_checks.iter().enumerate() {
            let label = if i == 0 { "permissions:" } else { "" };
            let outcome = match &c.granted_by {
                Some(g) if g.principal == c.principal => format!("granted by {}", g.role),
                Some(g) => format!("granted by {} via {}", g.role, g.principal),
                None => "MISSING".to_string(),
            };
            writeln!(
                f,
                "{label:<12} {} in {} for {}: {outcome}",
                c.permission, c.workspace, c.principal
            )?;
        }
        match self.deny_rule {
            Some(rule) => write!(f, "deny rule:   {rule} fired ({})", self.rule),
            None => write!(f, "deny rule:   none fired"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BindingDefaults, builtin};

    /// `explain` is `allow` recorded: the same decision for every endpoint and method of the
    /// built-in catalog, for a human, a service, an admin and nobody.
    #[test]
    fn explain_decides_exactly_like_allow() {
        let defaults = BindingDefaults {
            admin_email: Some("root@example.com".into()),
            ..BindingDefaults::default()
        };
        let policy = CompiledPolicy::build(builtin::builtin_document(), &defaults, "t").unwrap();
        let callers = [
            Some(Principal {
                scopes: vec!["models:read".into()],
                ..Principal::with_id("alice@example.com")
            }),
            Some(Principal::with_id("service:evaluator")),
            Some(Principal::with_id("root@example.com")),
            None,
        ];
        let mut compared = 0;
        for (pattern, methods) in &builtin::builtin_document().authz.endpoints {
            let path = pattern
                .replace("{workspace}", "default")
                .replace("{workspace_id}", "system")
                .replace(['{', '}'], "");
            for method in methods.keys().map(|m| m.to_uppercase()) {
                for caller in &callers {
                    let decision = policy.allow(caller.as_ref(), &method, &path);
                    let explained = policy.explain(caller.as_ref(), &method, &path);
                    assert_eq!(
                        (explained.allowed, explained.reason),
                        (decision.allowed, decision.reason.as_str()),
                        "{method} {path} {caller:?}"
                    );
                    assert_eq!(explained.endpoint.as_deref(), decision.endpoint);
                    compared += 1;
                }
            }
        }
        assert!(compared > 300, "{compared}");
    }
}
