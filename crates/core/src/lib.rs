//! nmp-authz's decision core: who is calling ([`identity`]: claims, tokens and headers mapped
//! onto a principal the `x-nmp-*` headers can carry), what is allowed ([`policy`]: NMP's
//! authorization document, compiled once per load, and the pure decisions over it), the path a
//! request is decided on ([`request_path`]) and YAML reading ([`yaml`]). No I/O, no clock, no async runtime: any host
//! can embed it (the server, an in-process proxy filter), and it builds for `wasm32-wasip1`.

pub mod identity;
pub mod policy;
pub mod request_path;
pub mod yaml;
