//! The text report of `moat doctor`.

use moat_sandbox::{CheckStatus, DoctorCheck};

/// How many checks failed: `moat doctor` exits non-zero when any did.
pub fn failures(checks: &[DoctorCheck]) -> usize {
    checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .count()
}

/// The check's status as the first column of a report line.
fn label(status: CheckStatus) -> &'static str {
    match status {
        CheckStatus::Ok => "[ok]  ",
        CheckStatus::Warn => "[warn]",
        CheckStatus::Fail => "[fail]",
    }
}

/// One line per check, its fix beneath it, and a verdict.
pub fn render(checks: &[DoctorCheck]) -> String {
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!("{} {}: {}\n", label(c.status), c.name, c.message));
        if let Some(fix) = &c.fix {
            for (i, line) in fix.lines().enumerate() {
                let label = if i == 0 { "fix:" } else { "    " };
                out.push_str(&format!("       {label} {line}\n"));
            }
        }
    }
    let warnings = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Warn)
        .count();
    out.push_str(&match (failures(checks), warnings) {
        (0, 0) => "\nAll checks passed.\n".to_owned(),
        (0, w) => format!("\nNo problems that stop moat; {w} warning(s).\n"),
        (f, _) => format!("\n{f} problem(s) need fixing.\n"),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fix_of_several_lines_is_indented_under_its_check() {
        let checks = vec![
            DoctorCheck::ok("disk", "12.0 GB free"),
            DoctorCheck::problem(
                CheckStatus::Fail,
                "grant",
                "none of claude, anthropic is granted",
                "moat grant claude\nmoat grant anthropic",
            ),
        ];
        assert_eq!(
            render(&checks),
            "[ok]   disk: 12.0 GB free\n\
             [fail] grant: none of claude, anthropic is granted\n       \
             fix: moat grant claude\n            \
             moat grant anthropic\n\n1 problem(s) need fixing.\n"
        );
        assert_eq!(failures(&checks), 1);
    }

    #[test]
    fn warnings_alone_do_not_fail() {
        let checks = vec![DoctorCheck::problem(
            CheckStatus::Warn,
            "ssh agent",
            "SSH_AUTH_SOCK is not set",
            "ssh-add",
        )];
        assert!(render(&checks).ends_with("\nNo problems that stop moat; 1 warning(s).\n"));
        assert_eq!(failures(&checks), 0);
    }
}
