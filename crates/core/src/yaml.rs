//! YAML reading shared by configuration and policy data, with serde-saphyr (see README for why
//! this crate): into a JSON value tree or a typed document, with one-line errors that still give
//! line and column.

/// Parses YAML text into `T`: a JSON value tree, or a document read directly (policy
/// [`crate::policy::SourceDocument`]). Duplicate keys are errors.
pub fn to_value<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    // No source snippets: an operator-facing error stays on one line. The parser's default
    // budget (250,000 nodes) refuses a policy of about 35,000 bindings; these bounds admit
    // well over a million while still stopping a document built to exhaust memory (the same
    // 256 MiB a bundle may decompress to).
    let options = serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_nodes: 20_000_000,
            max_events: 50_000_000,
            max_total_scalar_bytes: 256 * 1024 * 1024,
        },
    };
    serde_saphyr::from_str_with_options(text, options).map_err(|e| one_line(&e.to_string()))
}

fn one_line(s: &str) -> String {
    // The library's advice about its own options means nothing to an operator.
    let s = s.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    /// 40,000 bindings (about 280,000 YAML nodes, past the parser's default budget) parse;
    /// `scripts/bench-policy.sh` loads 100,000 through the server.
    #[test]
    fn large_policy_documents_parse() {
        let mut text = String::from("authz:\n  principals:\n");
        for n in 0..40_000 {
            text.push_str(&format!(
                "    \"user-{n}@example.com\": {{workspaces: {{ws-{}: [Editor]}}}}\n",
                n % 1000
            ));
        }
        let value: serde_json::Value = super::to_value(&text).unwrap();
        assert_eq!(
            value["authz"]["principals"].as_object().unwrap().len(),
            40_000
        );
    }
}
