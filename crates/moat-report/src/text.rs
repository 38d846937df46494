//! Text for a terminal: aligned tables, and control characters made
//! visible in whatever moat prints.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every control character made visible, for a terminal.
///
/// Much of what moat prints comes from a sandbox: moat.yaml values in a
/// trust review, URLs and headers in a trace, error messages. An ESC, CR
/// or OSC sequence in it would be obeyed by the user's terminal (clear a
/// line, hide an added mount, set the title), and so would a C1 control
/// such as CSI (U+009B). All of them — C0 but `\n` and `\t`, DEL and C1 —
/// become `\u001b`-style escapes. JSON's form of escape, so the same pass
/// keeps JSON output valid and meaning the same: serde_json already
/// escapes C0 in strings, but writes DEL and C1 raw.
///
/// Every line the CLI prints goes through this (`out!`, `outln!`,
/// `err!`, `errln!`, errors); only a run's own output (`moat run`, the
/// replay of `moat logs`) reaches the terminal as the program wrote it.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Renders rows as an aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_visibly() {
        assert!(matches!(escape_controls("plain\tline\n"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\u{1b}[2K\rb\u{7}\u{7f}\u{9b}31m\n"),
            "a\\u001b[2K\\u000db\\u0007\\u007f\\u009b31m\n"
        );
        // JSON keeps its meaning.
        let json = serde_json::to_string("x\u{9b}\u{1b}").unwrap();
        let escaped = escape_controls(&json);
        let back: String = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back, "x\u{9b}\u{1b}");
    }

    #[test]
    fn a_table_aligns_its_columns_on_the_widest_cell() {
        let rows = vec![
            vec!["a".to_owned(), "long cell".to_owned()],
            vec!["bbb".to_owned(), "x".to_owned()],
        ];
        assert_eq!(
            table(&["K", "V"], &rows),
            "K    V\na    long cell\nbbb  x\n"
        );
    }
}
