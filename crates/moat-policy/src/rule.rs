use std::fmt;
use std::str::FromStr;

use crate::error::RuleProblem;
use crate::PolicyError;

/// What a matching [`Rule`] does with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// `*` or one HTTP method, written in upper case (`GET`, `DELETE`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MethodPattern {
    Any,
    Exact(String),
}

impl MethodPattern {
    /// Parses `*` or an upper-case method token. Lower case is refused
    /// rather than folded so the file reads the way requests are logged.
    pub(crate) fn parse(s: &str) -> Result<Self, RuleProblem> {
        if s == "*" {
            return Ok(Self::Any);
        }
        let is_token = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphabetic() || c == '-' || c == '_');
        if !is_token {
            return Err(RuleProblem::NotAMethod(s.to_owned()));
        }
        if s.chars().any(|c| c.is_ascii_lowercase()) {
            return Err(RuleProblem::LowerCaseMethod(s.to_owned()));
        }
        Ok(Self::Exact(s.to_owned()))
    }

    /// Compares ignoring case: some servers accept `delete` as `DELETE`, and
    /// a deny rule must not be sidestepped by spelling.
    pub fn matches(&self, method: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(m) => m.eq_ignore_ascii_case(method),
        }
    }
}

impl fmt::Display for MethodPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(m) => f.write_str(m),
        }
    }
}

/// A path glob: `/repos/*/issues`, `/admin/**`.
///
/// Segments are split on `/`; `*` matches exactly one segment, `**` any
/// number including zero, anything else matches literally (after
/// percent-decoding). Empty segments are ignored, so `/a//b/` is `/a/b`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern {
    raw: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    One,
    Any,
}

impl PathPattern {
    pub(crate) fn parse(s: &str) -> Result<Self, RuleProblem> {
        if !s.starts_with('/') {
            return Err(RuleProblem::RelativePath(s.to_owned()));
        }
        if let Some(i) = s.find(['?', '#']) {
            let tail = s.get(i..).unwrap_or_default();
            return Err(RuleProblem::Query(tail.to_owned()));
        }
        let mut segments = Vec::new();
        for seg in s.split('/').filter(|seg| !seg.is_empty()) {
            segments.push(match seg {
                "*" => Segment::One,
                "**" => Segment::Any,
                "." | ".." => return Err(RuleProblem::DotSegment(seg.to_owned())),
                _ if seg.contains('*') => return Err(RuleProblem::PartialStar(seg.to_owned())),
                _ => {
                    let literal = percent_decode(seg);
                    if literal.contains([';', '\\', '/', '%'])
                        || literal.ends_with(['.', ' '])
                        || literal.chars().any(char::is_control)
                    {
                        return Err(RuleProblem::NonCanonicalSegment(seg.to_owned()));
                    }
                    Segment::Literal(literal)
                }
            });
        }
        Ok(Self {
            raw: s.to_owned(),
            segments,
        })
    }

    /// Whether the request path (query string and fragment ignored) matches.
    ///
    /// The request path is percent-decoded and its `.`/`..` segments are
    /// resolved first, the way servers do, so `/public/../admin` or
    /// `/%61dmin` cannot dodge a rule on `/admin/**`.
    /// An ambiguous path (see [`canonical_path`]) matches no pattern;
    /// [`NetworkPolicy::decide`](crate::NetworkPolicy::decide) denies it
    /// outright on hosts that have rules.
    pub fn matches(&self, path: &str) -> bool {
        canonical_path(path).is_some_and(|segments| self.matches_canonical(&segments))
    }

    /// Whether the segments of a path already through [`canonical_path`]
    /// match.
    pub fn matches_canonical(&self, segments: &[String]) -> bool {
        glob_match(&self.segments, segments)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// One line of a host's rule list: `allow GET /repos/*/issues`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub action: Action,
    pub method: MethodPattern,
    pub path: PathPattern,
}

impl Rule {
    /// Parses `ACTION METHOD PATH`, separated by whitespace.
    pub fn parse(s: &str) -> Result<Rule, PolicyError> {
        let err = |reason: RuleProblem| PolicyError::InvalidRule {
            rule: s.to_owned(),
            reason,
        };
        let mut words = s.split_whitespace();
        let action = match words.next() {
            None => return Err(err(RuleProblem::Empty)),
            Some(w) if w.eq_ignore_ascii_case("allow") => Action::Allow,
            Some(w) if w.eq_ignore_ascii_case("deny") => Action::Deny,
            Some(w) => return Err(err(RuleProblem::NotAnAction(w.to_owned()))),
        };
        let method = match words.next() {
            None => return Err(err(RuleProblem::NoMethodNorPath)),
            Some(w) if w.starts_with('/') => {
                return Err(err(RuleProblem::NoMethodBefore(w.to_owned())))
            }
            Some(w) => MethodPattern::parse(w).map_err(err)?,
        };
        let path = match words.next() {
            None => return Err(err(RuleProblem::NoPath)),
            Some(w) => PathPattern::parse(w).map_err(err)?,
        };
        if let Some(extra) = words.next() {
            return Err(err(RuleProblem::AfterPath(extra.to_owned())));
        }
        Ok(Rule {
            action,
            method,
            path,
        })
    }

    /// Whether this rule applies to the request.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method.matches(method) && self.path.matches(path)
    }

    /// [`Rule::matches`] on a path already through [`canonical_path`].
    pub fn matches_canonical(&self, method: &str, segments: &[String]) -> bool {
        self.method.matches(method) && self.path.matches_canonical(segments)
    }
}

impl FromStr for Rule {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.action, self.method, self.path)
    }
}

/// Strips the query string and fragment from a request path.
pub(crate) fn strip_query(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(i) => path.get(..i).unwrap_or(path),
        None => path,
    }
}

/// The canonical form of a request path, as the segments servers resolve
/// it to, or `None` when the path is ambiguous: servers disagree about
/// what it names, so no rule can be trusted to see what the server will.
///
/// - The query string and fragment are dropped.
/// - Percent escapes are decoded once (`%61` is `a`); `%2f`, `%5c` and a
///   backslash separate segments like `/` (many servers decode them before
///   routing); empty and `.` segments are dropped and `..` removes the
///   segment before it.
/// - Ambiguous, hence `None`: a segment ending in a dot or a space
///   (`/admin.`, `/admin%20/x`), a malformed escape (`%zz`, a trailing `%`),
///   an escape that still decodes to an escape (`%2561`, double encoding),
///   a NUL or any other control character (raw or encoded), bytes that are
///   not UTF-8 once decoded, and `;` parameters (`/admin;x`, `/..;/`),
///   which some servers strip and others keep.
pub fn canonical_path(path: &str) -> Option<Vec<String>> {
    let raw = strip_query(path).as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let h = raw.get(i + 1).and_then(|c| hex_val(*c))?;
            let l = raw.get(i + 2).and_then(|c| hex_val(*c))?;
            decoded.push(h << 4 | l);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    if decoded.iter().any(|&b| b.is_ascii_control() || b == b';') {
        return None;
    }
    let double_encoded = decoded
        .windows(3)
        .any(|w| w[0] == b'%' && hex_val(w[1]).is_some() && hex_val(w[2]).is_some());
    if double_encoded {
        return None;
    }
    let text = String::from_utf8(decoded).ok()?;
    let mut out: Vec<String> = Vec::new();
    for seg in text.split(['/', '\\']) {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            // Windows-backed servers (IIS, and so ASP.NET) drop a
            // segment's trailing dots and spaces, others keep them:
            // `/admin.` is /admin to one and not to the other.
            _ if seg.ends_with(['.', ' ']) => return None,
            _ => out.push(seg.to_owned()),
        }
    }
    Some(out)
}

/// The methods a path's query claims in `_method` parameters, which
/// frameworks (Laravel, Symfony, Rails' Rack middleware among them) run
/// instead of the request's own: `/x?_method=DELETE` is `["DELETE"]`.
pub(crate) fn method_params(path: &str) -> Vec<String> {
    let path = path.split('#').next().unwrap_or_default();
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    query
        .split(['&', ';'])
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            // Form encoding: `+` is a space; a key may be escaped too.
            let key = percent_decode(&key.replace('+', " "));
            (key.trim() == "_method").then(|| percent_decode(&value.replace('+', " ")))
        })
        .collect()
}

/// Decodes `%XX` escapes; malformed escapes are kept as written and
/// invalid UTF-8 is replaced, so decoding never fails.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    if !bytes.contains(&b'%') {
        return s.to_owned();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| hex_val(*c)),
                bytes.get(i + 2).and_then(|c| hex_val(*c)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Glob match over segments, `**` as the star. Iterative with a single
/// backtrack point, so hostile paths cost O(n·m) and no stack.
fn glob_match(pattern: &[Segment], path: &[String]) -> bool {
    let (mut p, mut s) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while s < path.len() {
        match pattern.get(p) {
            Some(Segment::Any) => {
                star = Some((p, s));
                p += 1;
            }
            Some(Segment::One) => {
                p += 1;
                s += 1;
            }
            Some(Segment::Literal(lit)) if *lit == path[s] => {
                p += 1;
                s += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    p = sp + 1;
                    s = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|seg| *seg == Segment::Any))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Rule {
        match Rule::parse(s) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    fn path(s: &str) -> PathPattern {
        match PathPattern::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn reason(s: &str) -> String {
        match Rule::parse(s) {
            Ok(r) => panic!("{s:?} parsed as {r}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_the_documented_examples() {
        let r = rule("allow GET /repos/*/issues");
        assert_eq!(r.action, Action::Allow);
        assert_eq!(r.method, MethodPattern::Exact("GET".into()));
        assert_eq!(r.path.as_str(), "/repos/*/issues");
        let r = rule("deny * /admin/**");
        assert_eq!(r.action, Action::Deny);
        assert_eq!(r.method, MethodPattern::Any);
        assert_eq!(rule("deny DELETE /**").to_string(), "deny DELETE /**");
    }

    #[test]
    fn whitespace_and_action_case_are_normalised_in_display() {
        assert_eq!(rule("  Allow\tGET   /x  ").to_string(), "allow GET /x");
    }

    #[test]
    fn single_star_is_exactly_one_segment() {
        let p = path("/repos/*/issues");
        assert!(p.matches("/repos/moat/issues"));
        assert!(!p.matches("/repos/issues"));
        assert!(!p.matches("/repos/a/b/issues"));
        assert!(!p.matches("/repos/moat/issues/1"));
        assert!(!p.matches("/repos/moat/pulls"));
    }

    #[test]
    fn double_star_is_any_number_including_zero() {
        let p = path("/admin/**");
        assert!(p.matches("/admin"));
        assert!(p.matches("/admin/"));
        assert!(p.matches("/admin/users/1"));
        assert!(!p.matches("/administrator"));
        assert!(!p.matches("/"));
        let all = path("/**");
        assert!(all.matches("/"));
        assert!(all.matches(""));
        assert!(all.matches("/a/b/c"));
        let mid = path("/a/**/z");
        assert!(mid.matches("/a/z"));
        assert!(mid.matches("/a/b/c/z"));
        assert!(!mid.matches("/a/b/c"));
        let two = path("/**/x/**/y");
        assert!(two.matches("/x/y"));
        assert!(two.matches("/q/x/r/s/y"));
        assert!(!two.matches("/q/y/x"));
    }

    #[test]
    fn literals_are_exact_and_case_sensitive() {
        let p = path("/Repos");
        assert!(p.matches("/Repos"));
        assert!(!p.matches("/repos"));
        assert!(path("/").matches("/"));
        assert!(!path("/").matches("/a"));
    }

    #[test]
    fn query_and_fragment_are_ignored() {
        let p = path("/search");
        assert!(p.matches("/search?q=1"));
        assert!(p.matches("/search#top"));
        assert!(p.matches("/search/?q=/a/b"));
    }

    #[test]
    fn request_paths_are_normalised_before_matching() {
        let p = path("/admin/**");
        assert!(p.matches("//admin//x"));
        assert!(p.matches("/public/../admin/x"));
        assert!(p.matches("/./admin"));
        assert!(p.matches("/%61dmin/x"));
        assert!(p.matches("/public/%2e%2e/admin"));
        assert!(p.matches("/../../admin"));
        // An encoded slash separates segments, as many servers decode it.
        assert!(path("/a/b").matches("/a%2Fb"));
        assert!(path("/a/b").matches("/a\\b"));
        // Malformed escapes are ambiguous: they match nothing.
        assert!(!path("/**").matches("/a%zz"));
        assert!(path("/caf%C3%A9").matches("/café"));
    }

    #[test]
    fn a_segment_ending_in_a_dot_or_space_is_ambiguous() {
        for p in [
            "/admin.",
            "/admin%2e",
            "/admin%2E/x",
            "/admin%20",
            "/admin%20/x",
            "/admin../x",
            "/a/...",
        ] {
            assert_eq!(canonical_path(p), None, "{p}");
        }
        assert!(path("/v1.2/x").matches("/v1.2/x"));
        assert!(path("/my%20file/x").matches("/my file/x"));
        assert!(reason("deny * /admin.").contains("names no canonical path"));
        assert!(reason("deny * /admin%20").contains("names no canonical path"));
    }

    #[test]
    fn method_parameters_are_read_from_the_query() {
        assert_eq!(method_params("/x?_method=DELETE"), ["DELETE"]);
        assert_eq!(
            method_params("/x?a=1&%5Fmethod=PUT;_method=patch#f"),
            ["PUT", "patch"]
        );
        assert!(method_params("/x?method=DELETE&_methodx=1").is_empty());
        assert!(method_params("/x#?_method=DELETE").is_empty());
    }

    #[test]
    fn method_matching() {
        let r = rule("deny DELETE /**");
        assert!(r.matches("DELETE", "/x"));
        assert!(r.matches("delete", "/x"));
        assert!(!r.matches("GET", "/x"));
        assert!(rule("allow * /x").matches("PROPFIND", "/x"));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            reason("alow GET /x"),
            "invalid network rule \"alow GET /x\": expected \"allow\" or \"deny\", then a METHOD \
             (or *), then a path starting with / (found \"alow\" where \"allow\" or \"deny\" belongs)"
        );
        assert!(reason("").contains("the rule is empty"));
        assert!(reason("   ").contains("the rule is empty"));
        assert!(reason("allow").contains("missing the METHOD and the path"));
        assert!(reason("allow GET").contains("missing the path"));
        assert!(reason("allow /x").contains("missing the METHOD before \"/x\""));
        assert!(reason("allow get /x").contains("must be upper case: \"GET\""));
        assert!(reason("allow G3T /x").contains("not an HTTP method"));
        assert!(reason("allow GET x").contains("must start with /"));
        assert!(reason("allow GET /x?y=1").contains("remove \"?y=1\""));
        assert!(reason("allow GET /x extra").contains("unexpected \"extra\""));
        assert!(reason("allow GET /a*").contains("must be a whole segment"));
        assert!(reason("allow GET /***").contains("must be a whole segment"));
        assert!(reason("allow GET /a/../b").contains("\"..\" is not allowed"));
        assert!(reason("deny * /a;b").contains("names no canonical path"));
        assert!(reason("deny * /a%2fb").contains("names no canonical path"));
        assert!(reason("deny * /a%zz").contains("names no canonical path"));
    }
}
