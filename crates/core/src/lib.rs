//! nmp-authz's decision core: who is calling ([`identity`]: claims, tokens and headers mapped
//! onto a principal the `x-nmp-*` headers can carry), what is allowed ([`policy`]: NMP's
//! authorization document, compiled once per load, and the pure decisions over it), the path a
//! request is decided on ([`request_path`]), the one answer every face renders ([`verdict`]),
//! the configuration's keys and their validation ([`config`]), YAML reading ([`yaml`]), and
//! which decisions are logged and what their records say ([`record`]). No I/O, no clock, no
//! async runtime: any host can embed it (the server, an in-process proxy filter), and it builds
//! for `wasm32-wasip1`.

/// Defines a fieldless enum from one table whose rows give each variant its stable name, a
/// value of `$kind` and a short sentence, with `ALL` (table order), `as_str`, `kind` and
/// `describe`: lists that cannot fall out of step with the enum.
macro_rules! table_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $kind:ty {
            $( $variant:ident = ($text:literal, $value:expr, $describe:literal $(,)?), )*
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $variant, )*
        }

        impl $name {
            /// Every variant, in the order of the table.
            pub const ALL: &'static [$name] = &[$( $name::$variant, )*];

            /// The stable name (metrics, logs, metadata).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }

            /// A short human sentence.
            pub fn describe(self) -> &'static str {
                match self {
                    $( $name::$variant => $describe, )*
                }
            }

            pub fn kind(self) -> $kind {
                match self {
                    $( $name::$variant => $value, )*
                }
            }
        }
    };
}
pub(crate) use table_enum;

pub mod answer;
pub mod config;
pub mod identity;
pub mod policy;
pub mod record;
pub mod request_path;
pub mod verdict;
pub mod yaml;
