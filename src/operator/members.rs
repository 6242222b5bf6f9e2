//! `nmp-authz members list --workspace NAME`: who holds which role there, from the same
//! policy sources (and `auth:` bindings) the server loads.

use crate::config::Config;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List the principals with a role in a workspace, and how they hold it.
    List(ListArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// The workspace, e.g. default.
    #[arg(long)]
    workspace: String,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(command: &Command, config: &Config) -> Result<(), String> {
    let Command::List(args) = command;
    if args.workspace.is_empty() || args.workspace.contains('/') {
        return Err(format!(
            "--workspace {:?} is not a workspace name",
            args.workspace
        ));
    }
    let policy = crate::sources::load(config).map_err(|e| e.to_string())?;
    let members = policy.members(&args.workspace);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&members).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let width = members
        .members
        .iter()
        .map(|m| m.principal.len())
        .chain([9])
        .max()
        .unwrap_or(9);
    println!("{:<width$}  {:<12}  ROLES", "PRINCIPAL", "KIND");
    for m in &members.members {
        let how = match m.via {
            "platform_admin" => " (in system: every workspace)",
            _ => "",
        };
        println!(
            "{:<width$}  {:<12}  {}{how}",
            m.principal,
            m.kind,
            m.roles.join(", ")
        );
    }
    if members.members.is_empty() {
        println!("(no principal has a role in {})", members.workspace);
    }
    if let Some(role) = &members.service_default {
        println!(
            "every service: principal without a binding here holds {role} (implicit, by principal id)"
        );
    }
    Ok(())
}
