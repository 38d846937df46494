//! A small YAML tree with positions, built from `saphyr-parser` events.
//!
//! Serde-based loaders lose what good messages need: where a key is, and
//! whether `8080` was written plain (a number) or quoted (a string). This
//! tree keeps both, and resolves plain scalars only when asked, using the
//! YAML 1.2 core schema (so `yes` is a string, not a boolean).

use saphyr_parser::{Event, Parser, ScalarStyle, Span, StrInput, Tag};

/// Nesting deeper than this is refused: no moat.yaml needs it, and the
/// builder recurses once per level.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Scalar { text: String, plain: bool },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// What a scalar means under the YAML 1.2 core schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Resolved<'a> {
    Null,
    Bool(bool),
    /// Saturates to `i128::MAX`/`MIN` so out-of-range numbers stay numbers
    /// and fail range checks instead of turning into strings.
    Int(i128),
    Float(f64),
    Str(&'a str),
}

impl Node {
    pub fn resolve(&self) -> Option<Resolved<'_>> {
        match &self.value {
            Value::Scalar { text, plain: false } => Some(Resolved::Str(text)),
            Value::Scalar { text, plain: true } => Some(resolve_plain(text)),
            _ => None,
        }
    }

    /// "a string", "a number", ... for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Scalar { .. } => match self.resolve() {
                Some(Resolved::Null) => "nothing (null)",
                Some(Resolved::Bool(_)) => "a boolean",
                Some(Resolved::Int(_) | Resolved::Float(_)) => "a number",
                _ => "a string",
            },
        }
    }

    /// The scalar as written, whatever it resolves to.
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

fn resolve_plain(text: &str) -> Resolved<'_> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    if let Some(digits) = text.strip_prefix("0x") {
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Resolved::Int(i128::from_str_radix(digits, 16).unwrap_or(i128::MAX));
        }
    }
    if let Some(digits) = text.strip_prefix("0o") {
        if !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Resolved::Int(i128::from_str_radix(digits, 8).unwrap_or(i128::MAX));
        }
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        let saturated = if text.starts_with('-') {
            i128::MIN
        } else {
            i128::MAX
        };
        return Resolved::Int(text.parse().unwrap_or(saturated));
    }
    if is_core_float(unsigned) {
        if let Ok(f) = text.parse::<f64>() {
            return Resolved::Float(f);
        }
    }
    Resolved::Str(text)
}

/// `[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?` or `\.[0-9]+(...)?`, sign removed.
fn is_core_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (s.get(..i).unwrap_or(""), s.get(i + 1..)),
        None => (s, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match frac {
        Some(f) => digits(int) && digits(f) && !(int.is_empty() && f.is_empty()),
        None => !int.is_empty() && digits(int),
    };
    let exponent_ok = match exponent {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits(e)
        }
    };
    mantissa_ok && exponent_ok
}

/// A problem found while building the tree, with its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Parses one YAML document. `None` for an empty stream.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    let mut builder = Builder {
        parser: Parser::new_from_str(text),
        last: (1, 1),
    };
    builder.document()
}

struct Builder<'a> {
    parser: Parser<'a, StrInput<'a>>,
    /// Position of the last event, for errors at end of input.
    last: (usize, usize),
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), YamlError> {
        match self.parser.next() {
            Some(Ok((event, span))) => {
                self.last = position(&span);
                Ok((event, span))
            }
            Some(Err(e)) => Err(YamlError {
                line: e.marker().line(),
                col: e.marker().col() + 1,
                message: e.info().to_owned(),
            }),
            None => Err(self.error_at(self.last, "unexpected end of input")),
        }
    }

    fn error_at(&self, (line, col): (usize, usize), message: &str) -> YamlError {
        YamlError {
            line,
            col,
            message: message.to_owned(),
        }
    }

    fn document(&mut self) -> Result<Option<Node>, YamlError> {
        let mut root = None;
        loop {
            let (event, span) = self.next()?;
            match event {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(root),
                Event::DocumentStart(_) => {
                    if root.is_some() {
                        return Err(self.error_at(
                            position(&span),
                            "more than one YAML document (---); moat.yaml holds a single document",
                        ));
                    }
                    let (event, span) = self.next()?;
                    root = Some(self.node(event, span, 0)?);
                }
                _ => return Err(self.error_at(position(&span), "unexpected YAML event")),
            }
        }
    }

    fn node(&mut self, event: Event<'a>, span: Span, depth: usize) -> Result<Node, YamlError> {
        let (line, col) = position(&span);
        if depth > MAX_DEPTH {
            return Err(self.error_at((line, col), "nesting is too deep"));
        }
        let value = match event {
            Event::Scalar(text, style, _anchor, tag) => {
                self.scalar(text.into_owned(), style, tag.as_deref(), (line, col))?
            }
            Event::SequenceStart(_, tag) => {
                self.reject_tag(tag.is_some(), (line, col))?;
                self.sequence(depth)?
            }
            Event::MappingStart(_, tag) => {
                self.reject_tag(tag.is_some(), (line, col))?;
                self.mapping(depth)?
            }
            Event::Alias(_) => {
                return Err(self.error_at(
                    (line, col),
                    "aliases (*name) are not supported in moat.yaml; write the value out",
                ))
            }
            _ => return Err(self.error_at((line, col), "unexpected YAML event")),
        };
        Ok(Node { line, col, value })
    }

    /// A scalar; `!!str` is the only tag taken (it makes the text a string).
    fn scalar(
        &self,
        text: String,
        style: ScalarStyle,
        tag: Option<&Tag>,
        at: (usize, usize),
    ) -> Result<Value, YamlError> {
        let forced_string = match tag {
            None => false,
            Some(t) if t.is_yaml_core_schema() && t.suffix == "str" => true,
            Some(t) => {
                let shown = if t.is_yaml_core_schema() {
                    format!("!!{}", t.suffix)
                } else {
                    format!("{}{}", t.handle, t.suffix)
                };
                return Err(self.error_at(
                    at,
                    &format!("YAML tags ({shown}) are not supported in moat.yaml; remove the tag"),
                ));
            }
        };
        Ok(Value::Scalar {
            text,
            plain: style == ScalarStyle::Plain && !forced_string,
        })
    }

    /// The items of a sequence whose start was just read, up to its end.
    fn sequence(&mut self, depth: usize) -> Result<Value, YamlError> {
        let mut items = Vec::new();
        loop {
            let (event, span) = self.next()?;
            if event == Event::SequenceEnd {
                break;
            }
            items.push(self.node(event, span, depth + 1)?);
        }
        Ok(Value::Seq(items))
    }

    /// The entries of a mapping whose start was just read, up to its end:
    /// keys plain strings, each once.
    fn mapping(&mut self, depth: usize) -> Result<Value, YamlError> {
        let mut entries: Vec<(Node, Node)> = Vec::new();
        loop {
            let (event, span) = self.next()?;
            if event == Event::MappingEnd {
                break;
            }
            let key = self.node(event, span, depth + 1)?;
            let Some(key_text) = key.text() else {
                return Err(self.error_at(
                    (key.line, key.col),
                    "mapping keys must be plain strings, not lists or mappings",
                ));
            };
            if let Some((first, _)) = entries.iter().find(|(k, _)| k.text() == Some(key_text)) {
                return Err(self.error_at(
                    (key.line, key.col),
                    &format!(
                        "duplicate key {key_text:?} (first defined on line {})",
                        first.line
                    ),
                ));
            }
            let (event, span) = self.next()?;
            let value = self.node(event, span, depth + 1)?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }

    fn reject_tag(&self, tagged: bool, at: (usize, usize)) -> Result<(), YamlError> {
        if tagged {
            return Err(self.error_at(
                at,
                "YAML tags are not supported in moat.yaml; remove the tag",
            ));
        }
        Ok(())
    }
}

fn position(span: &Span) -> (usize, usize) {
    (span.start.line(), span.start.col() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Node {
        match parse(text) {
            Ok(Some(n)) => n,
            other => panic!("{other:?}"),
        }
    }

    fn err(text: &str) -> YamlError {
        match parse(text) {
            Err(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_documents() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("# only a comment\n"), Ok(None));
        let n = root("---\n");
        assert_eq!(n.resolve(), Some(Resolved::Null));
    }

    #[test]
    fn positions_are_one_based() {
        let n = root("a: 1\nbb:\n  - x\n");
        let Value::Map(entries) = &n.value else {
            panic!("not a map")
        };
        assert_eq!((entries[1].0.line, entries[1].0.col), (2, 1));
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!((items[0].line, items[0].col), (3, 5));
    }

    #[test]
    fn plain_scalars_resolve_by_core_schema() {
        let cases: &[(&str, Resolved<'_>)] = &[
            ("~", Resolved::Null),
            ("null", Resolved::Null),
            ("true", Resolved::Bool(true)),
            ("FALSE", Resolved::Bool(false)),
            ("yes", Resolved::Str("yes")),
            ("8080", Resolved::Int(8080)),
            ("-3", Resolved::Int(-3)),
            ("0x1F", Resolved::Int(31)),
            ("0o17", Resolved::Int(15)),
            ("1.5", Resolved::Float(1.5)),
            ("2e3", Resolved::Float(2000.0)),
            (".5", Resolved::Float(0.5)),
            ("1.2.3", Resolved::Str("1.2.3")),
            (
                "99999999999999999999999999999999999999999",
                Resolved::Int(i128::MAX),
            ),
            ("e5", Resolved::Str("e5")),
            ("1e", Resolved::Str("1e")),
            (".", Resolved::Str(".")),
        ];
        for (text, want) in cases {
            assert_eq!(resolve_plain(text), *want, "{text}");
        }
    }

    #[test]
    fn quoted_and_tagged_scalars_are_strings() {
        for text in ["'8080'", "\"true\"", "!!str 8080", "|\n  8080\n"] {
            let n = root(text);
            assert!(matches!(n.resolve(), Some(Resolved::Str(_))), "{text}");
        }
    }

    #[test]
    fn rejects_duplicates_aliases_tags_and_multiple_documents() {
        let e = err("a: 1\nb: 2\na: 3\n");
        assert_eq!((e.line, e.col), (3, 1));
        assert!(e
            .message
            .contains("duplicate key \"a\" (first defined on line 1)"));
        assert!(err("a: &x 1\nb: *x\n").message.contains("aliases"));
        assert!(err("a: !!int 1\n").message.contains("tags"));
        assert!(err("a: !foo {}\n").message.contains("tags"));
        assert!(err("a: 1\n---\nb: 2\n").message.contains("more than one"));
        assert!(err("? [a]\n: 1\n")
            .message
            .contains("keys must be plain strings"));
    }

    #[test]
    fn syntax_errors_carry_positions() {
        let e = err("a: [1, 2\nb: 3\n");
        assert!(e.line >= 1);
        assert!(!e.message.is_empty());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(err(&text).message.contains("too deep"));
    }
}
