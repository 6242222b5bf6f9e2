//! YAML reading shared by configuration and policy data, with serde-saphyr (see README for why
//! this crate): into a JSON value tree, with one-line errors that still give line and column.

/// Parses YAML text into a JSON value tree. Duplicate keys are errors.
pub fn to_value<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    // No source snippets: an operator-facing error stays on one line.
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options(text, options).map_err(|e| one_line(&e.to_string()))
}

fn one_line(s: &str) -> String {
    // The library's advice about its own options means nothing to an operator.
    let s = s.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
