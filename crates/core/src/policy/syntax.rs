//! NMP's name syntax for permissions (`models.read`) and endpoint scopes (`models:read`).
//!
//! Written as plain byte checks rather than regular expressions: the scope check runs on every
//! request, and a shared `regex` matcher hands its scratch space out through a pool that other
//! worker threads reach by a slow path. The tests hold each check to the regular expression it
//! stands for.

/// `[a-z0-9]+(-[a-z0-9]+)*`: lower-case words joined by single hyphens.
fn is_word(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A permission: two or more words joined by dots, e.g. `inference.deployment-configs.read`.
pub(crate) fn is_permission(s: &str) -> bool {
    s.contains('.') && s.split('.').all(is_word)
}

/// An endpoint scope: `area:verb`, two words joined by one colon.
pub(crate) fn is_scope(s: &str) -> bool {
    s.split_once(':')
        .is_some_and(|(area, verb)| is_word(area) && is_word(verb))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use regex::Regex;

    /// Every string of up to `max_len` characters from `alphabet`: small enough to try all,
    /// and every branch of a character check is reached by some.
    pub(crate) fn strings_over(alphabet: &[char], max_len: usize) -> Vec<String> {
        let mut strings = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..max_len {
            frontier = frontier
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            strings.extend(frontier.iter().cloned());
        }
        strings
    }

    /// Every string over an alphabet that reaches each branch, up to a length: each check
    /// agrees with its regular expression on all of them.
    #[test]
    fn checks_agree_with_the_regular_expressions() {
        let permission =
            Regex::new(r"^[a-z0-9]+(-[a-z0-9]+)*(\.[a-z0-9]+(-[a-z0-9]+)*)+$").unwrap();
        let scope = Regex::new(r"^[a-z0-9]+(-[a-z0-9]+)*:[a-z0-9]+(-[a-z0-9]+)*$").unwrap();
        let alphabet = ['a', '7', '-', '.', ':', 'A', ' ', 'é'];
        let strings = strings_over(&alphabet, 6);
        assert!(strings.len() > 290_000);
        let (mut permissions, mut scopes) = (0, 0);
        for s in &strings {
            assert_eq!(is_permission(s), permission.is_match(s), "permission {s:?}");
            assert_eq!(is_scope(s), scope.is_match(s), "scope {s:?}");
            permissions += usize::from(is_permission(s));
            scopes += usize::from(is_scope(s));
        }
        // Both accept a good share, so agreement is not agreement on "no".
        assert!(permissions > 300 && scopes > 300, "{permissions} {scopes}");
        for good in [
            "models.read",
            "inference.deployment-configs.read",
            "a1.b-2.c",
        ] {
            assert!(is_permission(good), "{good}");
        }
        for good in ["models:read", "platform:read", "deployment-configs:write"] {
            assert!(is_scope(good), "{good}");
        }
        for bad in [
            "models",
            "models.",
            ".read",
            "Models.read",
            "a--b.c",
            "a.b\n",
        ] {
            assert!(!is_permission(bad), "{bad:?}");
        }
        for bad in [
            "models",
            "models:read:all",
            ":read",
            "openid",
            "api://x/models:read",
        ] {
            assert!(!is_scope(bad), "{bad:?}");
        }
    }
}
