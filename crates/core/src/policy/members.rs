//! Who holds which role in a workspace, from the compiled bindings (the same ones `allow`
//! reads): direct bindings, the `*` wildcard, platform admins (PlatformAdmin in `system`
//! reaches every workspace) and the implicit `ServiceSystem` of `service:` callers.

use serde::Serialize;

use super::compile::CompiledPolicy;
use super::decide::SYSTEM;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Members {
    pub workspace: String,
    pub members: Vec<Member>,
    /// The role every `service:` principal without a binding here holds (ServiceSystem),
    /// when the policy defines it.
    pub service_default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub principal: String,
    /// `wildcard` (`*`: every authenticated caller), `service` (a `service:` id), `email`
    /// (an id or email with `@`), or `id_or_group` (a binding key matches an id, an email or
    /// a group alike, so the policy cannot tell which it is).
    pub kind: &'static str,
    pub roles: Vec<String>,
    /// `binding` (bound in this workspace) or `platform_admin` (PlatformAdmin in `system`).
    pub via: &'static str,
}

impl CompiledPolicy {
    /// Everyone with a role in `workspace`: `*` first, then by principal.
    pub fn members(&self, workspace: &str) -> Members {
        let mut members: Vec<Member> = self
            .bindings
            .in_workspace(workspace)
            .filter(|(_, roles)| !roles.is_empty())
            .map(|(principal, roles)| Member {
                principal: principal.to_string(),
                kind: kind(principal),
                roles: roles
                    .iter()
                    .map(|r| self.role_name(*r).to_string())
                    .collect(),
                via: "binding",
            })
            .collect();
        if workspace != SYSTEM
            && let Some(admin) = self.platform_admin
        {
            for principal in &self.platform_admins {
                members.push(Member {
                    principal: principal.to_string(),
                    kind: kind(principal),
                    roles: vec![self.role_name(admin).to_string()],
                    via: "platform_admin",
                });
            }
        }
        members.sort_by(|a, b| {
            (a.principal != "*", &a.principal, a.via).cmp(&(
                b.principal != "*",
                &b.principal,
                b.via,
            ))
        });
        Members {
            workspace: workspace.into(),
            members,
            service_default: self.service_system.map(|r| self.role_name(r).to_string()),
        }
    }
}

impl CompiledPolicy {
    /// `principal`'s own bindings (no wildcard, no defaults): (workspace, roles), by workspace.
    pub fn bindings_of(&self, principal: &str) -> Vec<(String, Vec<String>)> {
        let mut bound: Vec<(String, Vec<String>)> = self
            .bindings
            .of(principal)
            .map(|(ws, roles)| {
                let roles = roles.iter().map(|r| self.role_name(*r).to_string());
                (ws.to_string(), roles.collect())
            })
            .collect();
        bound.sort();
        bound
    }
}

fn kind(principal: &str) -> &'static str {
    if principal == "*" {
        "wildcard"
    } else if principal.starts_with("service:") {
        "service"
    } else if principal.contains('@') {
        "email"
    } else {
        "id_or_group"
    }
}
