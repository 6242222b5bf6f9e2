//! Endpoint patterns and the trie that matches a request path against all of them at once.
//!
//! A pattern is `/`-separated: literal segments, `{name}` placeholders (one non-empty
//! segment), and optionally a `/-/{rest}` tail that matches any non-empty remainder after a
//! literal `-` segment. Of several matches the one with the fewest placeholders wins; ties go
//! to a spelled-out tail over a `{rest}` tail, then to more literal segments, then to the
//! lexically smaller pattern, so the choice never depends on load order.

use std::cmp::Reverse;

/// One parsed endpoint pattern.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    text: Box<str>,
    /// Segments as split on `/` (the first is the empty string before the leading `/`). For a
    /// tail pattern, only the segments before the `-`.
    segments: Vec<Segment>,
    tail: bool,
    placeholders: usize,
    literals: usize,
    /// Path segment index of a `{workspace}` / `{workspace_id}` placeholder.
    named_workspace: Option<usize>,
    /// Path segment index of a placeholder right after a `workspaces` segment.
    after_workspaces: Option<usize>,
}

/// The endpoint a path matched and where in the path its workspace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub pattern: usize,
    pub workspace_segment: Option<usize>,
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
            // NMP's matcher takes any segment in braces for a placeholder, whatever is inside:
            // its plugin routes carry FastAPI converters such as `{trailing_uri:path}`.
            segments.push(
                if seg.len() >= 2 && seg.starts_with('{') && seg.ends_with('}') {
                    Segment::Placeholder(seg[1..seg.len() - 1].into())
                } else if seg.contains(['{', '}']) {
                    return Err(format!(
                        "endpoint pattern {text:?} has a malformed placeholder {seg:?}"
                    ));
                } else {
                    Segment::Literal((*seg).into())
                },
            );
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
        let named_workspace = segments.iter().position(
            |s| matches!(s, Segment::Placeholder(n) if &**n == "workspace" || &**n == "workspace_id"),
        );
        let after_workspaces = (2..segments.len()).find(|&i| {
            matches!(&segments[i], Segment::Placeholder(_))
                && segments[i - 1] == Segment::Literal("workspaces".into())
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
            named_workspace,
            after_workspaces,
        })
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
    literals: super::FastMap<Box<str>, Node>,
    placeholder: Option<Box<Node>>,
    /// Patterns that end at this node.
    exact: Vec<usize>,
    /// Tail patterns whose prefix ends at this node.
    tails: Vec<usize>,
}

/// All endpoint patterns of a policy, in a trie walked once per request path.
#[derive(Debug, Default)]
pub(crate) struct Matcher {
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

    /// The winning pattern for a path (query already removed), if any pattern matches, and
    /// the path segment holding the workspace. As in NMP, the workspace may come from another
    /// matching pattern: a `{workspace}`/`{workspace_id}` placeholder in any match counts
    /// before a placeholder after a `workspaces` segment (the winner's first in each case).
    pub(crate) fn best_match(&self, path: &str) -> Option<Match> {
        let better = |candidate: usize, current: Option<usize>| {
            current.is_none_or(|c| self.patterns[candidate].rank() < self.patterns[c].rank())
        };
        let (mut best, mut best_named, mut best_after) = (None, None, None);
        self.walk(&self.root, Some(path), &mut |id| {
            let pattern = &self.patterns[id];
            if better(id, best) {
                best = Some(id);
            }
            if pattern.named_workspace.is_some() && better(id, best_named) {
                best_named = Some(id);
            }
            if pattern.after_workspaces.is_some() && better(id, best_after) {
                best_after = Some(id);
            }
        });
        let winner = &self.patterns[best?];
        let workspace_segment = winner
            .named_workspace
            .or_else(|| best_named.and_then(|id| self.patterns[id].named_workspace))
            .or(winner.after_workspaces)
            .or_else(|| best_after.and_then(|id| self.patterns[id].after_workspaces));
        Some(Match {
            pattern: best?,
            workspace_segment,
        })
    }

    /// Every pattern matching `path`, for explanations and tests.
    pub(crate) fn all_matches(&self, path: &str) -> Vec<usize> {
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
        m.best_match(path)
            .map(|found| &*m.patterns[found.pattern].text)
    }

    fn workspace(m: &Matcher, path: &str) -> Option<usize> {
        m.best_match(path).and_then(|found| found.workspace_segment)
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
        let m = matcher(&[
            "/apis/x/v2/workspaces/{workspace}/models",
            "/apis/entities/v2/workspaces/{name}",
            "/t/{workspace_id}/workspaces/{w}",
            "/apis/entities/v2/workspaces",
        ]);
        assert_eq!(workspace(&m, "/apis/x/v2/workspaces/a/models"), Some(5));
        assert_eq!(workspace(&m, "/apis/entities/v2/workspaces/a"), Some(5));
        assert_eq!(workspace(&m, "/t/a/workspaces/b"), Some(2));
        assert_eq!(workspace(&m, "/apis/entities/v2/workspaces"), None);
    }

    #[test]
    fn workspace_may_come_from_a_matching_pattern_that_did_not_win() {
        // The literal pattern wins the match, but NMP takes the workspace from any match.
        let m = matcher(&["/p/workspaces/special", "/p/workspaces/{workspace}"]);
        assert_eq!(
            best(&m, "/p/workspaces/special"),
            Some("/p/workspaces/special")
        );
        assert_eq!(workspace(&m, "/p/workspaces/special"), Some(3));
        // A named placeholder in a losing match beats an after-`workspaces` one in the winner.
        let m = matcher(&["/q/workspaces/{id}/{workspace}", "/q/workspaces/{id}/x"]);
        assert_eq!(best(&m, "/q/workspaces/a/x"), Some("/q/workspaces/{id}/x"));
        assert_eq!(workspace(&m, "/q/workspaces/a/x"), Some(4));
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        for bad in [
            "a/b", "/a//b", "/a/{x", "/a/x}y", "/a/x}", "/a/{", "/a?b", "/a/b/", "/a b",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(Pattern::parse("/").is_ok());
    }

    #[test]
    fn any_segment_in_braces_is_a_placeholder() {
        // NMP's plugin routes: FastAPI path converters inside the braces.
        let m = matcher(&[
            "/apis/agents/v2/workspaces/{workspace}/agents/{name}/-/{trailing_uri:path}",
        ]);
        assert_eq!(
            best(
                &m,
                "/apis/agents/v2/workspaces/w/agents/a/-/v1/chat/completions"
            ),
            Some("/apis/agents/v2/workspaces/{workspace}/agents/{name}/-/{trailing_uri:path}")
        );
        assert_eq!(best(&m, "/apis/agents/v2/workspaces/w/agents/a/-"), None);
        for odd in ["/a/{}/b", "/a/{1x}", "/a/{x:int}"] {
            let m = matcher(&[odd]);
            let path = odd.replace(odd.split('/').nth(2).unwrap(), "seg");
            assert_eq!(best(&m, &path), Some(odd), "{odd} matches {path}");
        }
    }
}
