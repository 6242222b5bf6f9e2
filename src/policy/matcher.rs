//! Endpoint patterns and the trie that matches a request path against all of them at once.
//!
//! A pattern is `/`-separated: literal segments, `{name}` placeholders (one non-empty
//! segment), and optionally a `/-/{rest}` tail that matches any non-empty remainder after a
//! literal `-` segment. Of several matches the one with the fewest placeholders wins; ties go
//! to a spelled-out tail over a `{rest}` tail, then to more literal segments, then to the
//! lexically smaller pattern, so the choice never depends on load order.

use std::cmp::Reverse;
use std::collections::HashMap;

/// One parsed endpoint pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: Box<str>,
    /// Segments as split on `/` (the first is the empty string before the leading `/`). For a
    /// tail pattern, only the segments before the `-`.
    segments: Vec<Segment>,
    tail: bool,
    placeholders: usize,
    literals: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Placeholder(Box<str>),
}

impl Pattern {
    /// Parses and checks a pattern; the error says what is malformed.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("endpoint pattern {text:?} must start with /"));
        }
        if let Some(c) = text
            .chars()
            .find(|c| matches!(c, '?' | '#') || c.is_whitespace())
        {
            return Err(format!("endpoint pattern {text:?} contains {c:?}"));
        }
        let raw: Vec<&str> = text.split('/').collect();
        let mut segments = Vec::with_capacity(raw.len());
        for (i, seg) in raw.iter().enumerate() {
            if i > 0 && seg.is_empty() && text != "/" {
                return Err(format!("endpoint pattern {text:?} has an empty segment"));
            }
            segments.push(if seg.starts_with('{') && seg.ends_with('}') {
                let name = &seg[1..seg.len() - 1];
                let valid = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!(
                        "endpoint pattern {text:?} has a malformed placeholder {seg:?}"
                    ));
                }
                Segment::Placeholder(name.into())
            } else if seg.contains(['{', '}']) {
                return Err(format!(
                    "endpoint pattern {text:?} has a malformed placeholder {seg:?}"
                ));
            } else {
                Segment::Literal((*seg).into())
            });
        }
        let placeholders = segments
            .iter()
            .filter(|s| matches!(s, Segment::Placeholder(_)))
            .count();
        let literals = segments.len() - 1 - placeholders;
        // `/-/` not at the start, followed by exactly one placeholder: a `{rest}` tail.
        let dash = (2..segments.len()).find(|&i| segments[i] == Segment::Literal("-".into()));
        let tail = dash.is_some_and(|i| {
            i + 2 == segments.len() && matches!(segments[i + 1], Segment::Placeholder(_))
        });
        if tail {
            segments.truncate(dash.unwrap_or_default());
        }
        Ok(Self {
            text: text.into(),
            segments,
            tail,
            placeholders,
            literals,
        })
    }

    /// Index (into the `/`-split request path) of the workspace: the `{workspace}` or
    /// `{workspace_id}` placeholder, else the placeholder right after a `workspaces` segment.
    pub fn workspace_segment(&self) -> Option<usize> {
        let all = self.all_segments();
        all.iter()
            .position(|s| matches!(s, Segment::Placeholder(n) if &**n == "workspace" || &**n == "workspace_id"))
            .or_else(|| {
                (2..all.len()).find(|&i| {
                    matches!(&all[i], Segment::Placeholder(_))
                        && all[i - 1] == Segment::Literal("workspaces".into())
                })
            })
    }

    /// All segments, including a tail's `-` and `{rest}`.
    fn all_segments(&self) -> Vec<Segment> {
        let mut all = self.segments.clone();
        if self.tail {
            all.push(Segment::Literal("-".into()));
            all.push(Segment::Placeholder("rest".into()));
        }
        all
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Lower ranks win: fewest placeholders, spelled-out tail, most literals, lexical order.
    fn rank(&self) -> (usize, bool, Reverse<usize>, &str) {
        (
            self.placeholders,
            self.tail,
            Reverse(self.literals),
            &self.text,
        )
    }
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    placeholder: Option<Box<Node>>,
    /// Patterns that end at this node.
    exact: Vec<usize>,
    /// Tail patterns whose prefix ends at this node.
    tails: Vec<usize>,
}

/// All endpoint patterns of a policy, in a trie walked once per request path.
#[derive(Debug, Default)]
pub struct Matcher {
    root: Node,
    patterns: Vec<Pattern>,
}

impl Matcher {
    /// Pattern `i` of `patterns` is reported as `i` by [`Matcher::best_match`].
    pub fn new(patterns: Vec<Pattern>) -> Self {
        let mut root = Node::default();
        for (id, pattern) in patterns.iter().enumerate() {
            let mut node = &mut root;
            for seg in &pattern.segments {
                node = match seg {
                    Segment::Literal(l) => node.literals.entry(l.clone()).or_default(),
                    Segment::Placeholder(_) => {
                        node.placeholder.get_or_insert_with(Default::default)
                    }
                };
            }
            if pattern.tail {
                node.tails.push(id);
            } else {
                node.exact.push(id);
            }
        }
        Self { root, patterns }
    }

    /// The winning pattern for a path (query already removed), if any pattern matches.
    pub fn best_match(&self, path: &str) -> Option<usize> {
        let mut best: Option<usize> = None;
        self.walk(&self.root, Some(path), &mut |id| {
            let better = best.is_none_or(|b| self.patterns[id].rank() < self.patterns[b].rank());
            if better {
                best = Some(id);
            }
        });
        best
    }

    /// Every pattern matching `path`, for explanations and tests.
    pub fn all_matches(&self, path: &str) -> Vec<usize> {
        let mut all = Vec::new();
        self.walk(&self.root, Some(path), &mut |id| all.push(id));
        all.sort_by(|a, b| self.patterns[*a].rank().cmp(&self.patterns[*b].rank()));
        all
    }

    /// `rest` is the unmatched remainder of the path starting at the current segment, or
    /// `None` once every segment is consumed.
    fn walk(&self, node: &Node, rest: Option<&str>, found: &mut impl FnMut(usize)) {
        let Some(rest) = rest else {
            node.exact.iter().for_each(|&id| found(id));
            return;
        };
        let (segment, after) = match rest.split_once('/') {
            Some((segment, after)) => (segment, Some(after)),
            None => (rest, None),
        };
        if segment == "-" && after.is_some_and(|tail| !tail.is_empty()) {
            node.tails.iter().for_each(|&id| found(id));
        }
        if let Some(child) = node.literals.get(segment) {
            self.walk(child, after, found);
        }
        if !segment.is_empty()
            && let Some(child) = &node.placeholder
        {
            self.walk(child, after, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(patterns: &[&str]) -> Matcher {
        Matcher::new(
            patterns
                .iter()
                .map(|p| Pattern::parse(p).unwrap())
                .collect(),
        )
    }

    fn best<'m>(m: &'m Matcher, path: &str) -> Option<&'m str> {
        m.best_match(path).map(|i| m.patterns[i].text())
    }

    #[test]
    fn placeholders_match_one_non_empty_segment() {
        let m = matcher(&["/a/{x}/c"]);
        assert_eq!(best(&m, "/a/b/c"), Some("/a/{x}/c"));
        assert_eq!(best(&m, "/a//c"), None);
        assert_eq!(best(&m, "/a/b/c/"), None);
        assert_eq!(best(&m, "/a/b/x/c"), None);
    }

    #[test]
    fn fewest_placeholders_win() {
        let m = matcher(&["/a/{x}/{y}", "/a/{x}/c", "/a/b/c"]);
        assert_eq!(best(&m, "/a/b/c"), Some("/a/b/c"));
        assert_eq!(best(&m, "/a/z/c"), Some("/a/{x}/c"));
        assert_eq!(best(&m, "/a/z/q"), Some("/a/{x}/{y}"));
    }

    #[test]
    fn dash_tail_matches_any_non_empty_remainder() {
        let m = matcher(&["/w/{ws}/m/{n}/-/{rest}"]);
        assert_eq!(best(&m, "/w/a/m/b/-/x"), Some("/w/{ws}/m/{n}/-/{rest}"));
        assert_eq!(best(&m, "/w/a/m/b/-/x/y/z"), Some("/w/{ws}/m/{n}/-/{rest}"));
        assert_eq!(best(&m, "/w/a/m/b/-/"), None);
        assert_eq!(best(&m, "/w/a/m/b/-"), None);
        assert_eq!(best(&m, "/w/a/m/b/x/y"), None);
    }

    #[test]
    fn spelled_out_tail_matches_exactly_and_wins_ties() {
        let m = matcher(&[
            "/o/{ws}/openai/-/v1/models",
            "/o/{ws}/openai/-/v1/models/{name}",
            "/o/{ws}/openai/-/{trailing_uri}",
        ]);
        assert_eq!(
            best(&m, "/o/w/openai/-/v1/models"),
            Some("/o/{ws}/openai/-/v1/models")
        );
        // Both have two placeholders here: the spelled-out tail wins the tie.
        assert_eq!(
            best(&m, "/o/w/openai/-/v1/models/llama"),
            Some("/o/{ws}/openai/-/v1/models/{name}")
        );
        assert_eq!(
            best(&m, "/o/w/openai/-/v1/chat/completions"),
            Some("/o/{ws}/openai/-/{trailing_uri}")
        );
        assert_eq!(
            best(&m, "/o/w/openai/-/v1/models/a/b"),
            Some("/o/{ws}/openai/-/{trailing_uri}")
        );
    }

    #[test]
    fn ties_break_on_literals_then_text() {
        let m = matcher(&["/a/{x}/b/{y}", "/a/{x}/{y}/{z}"]);
        assert_eq!(best(&m, "/a/1/b/2"), Some("/a/{x}/b/{y}"));
        let m = matcher(&["/a/{y}/c", "/a/{x}/c"]);
        assert_eq!(best(&m, "/a/1/c"), Some("/a/{x}/c"));
    }

    #[test]
    fn workspace_segment_prefers_named_placeholder() {
        let p = Pattern::parse("/apis/x/v2/workspaces/{workspace}/models").unwrap();
        assert_eq!(p.workspace_segment(), Some(5));
        let p = Pattern::parse("/apis/entities/v2/workspaces/{name}").unwrap();
        assert_eq!(p.workspace_segment(), Some(5));
        let p = Pattern::parse("/t/{workspace_id}/workspaces/{w}").unwrap();
        assert_eq!(p.workspace_segment(), Some(2));
        assert_eq!(
            Pattern::parse("/apis/entities/v2/workspaces")
                .unwrap()
                .workspace_segment(),
            None
        );
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        for bad in [
            "a/b", "/a//b", "/a/{x", "/a/{}/b", "/a/x}y", "/a/{1x}", "/a?b", "/a/b/", "/a b",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(Pattern::parse("/").is_ok());
    }
}
