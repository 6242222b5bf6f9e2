//! Operator tools that answer from the same config and policy the server uses, offline:
//! why a request is decided as it is (`explain`), whether a deployment is hardened
//! (`doctor`), quickstart tokens (`token`), and who has access to a workspace (`members`).

pub mod doctor;
pub mod explain;
pub mod members;
pub mod token;
