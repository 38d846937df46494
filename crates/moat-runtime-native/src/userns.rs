//! Why this machine refuses unprivileged user namespaces, and the fixes:
//! the hint every namespace failure carries (the support check, the
//! identity set-up, the init).

use std::fs;

pub(crate) fn read_sysctl(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// The usual reasons user namespaces are refused, and their fixes, as they
/// apply to this machine.
pub(crate) fn namespace_hint() -> String {
    let mut hints = Vec::new();
    if read_sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        hints.push(
            "user.max_user_namespaces is 0: run `sudo sysctl -w user.max_user_namespaces=15000`",
        );
    }
    if read_sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        hints.push("kernel.unprivileged_userns_clone is 0: run `sudo sysctl -w kernel.unprivileged_userns_clone=1`");
    }
    if read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1")
    {
        hints.push("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1): set it to 0 with sysctl, or install an AppArmor profile granting `userns` to the moat binary");
    }
    if hints.is_empty() {
        "Unprivileged user namespaces must be enabled (check `sysctl user.max_user_namespaces`, `kernel.unprivileged_userns_clone`, AppArmor/SELinux policy, and that this is not already inside a container that forbids them).".to_owned()
    } else {
        hints.join("; ")
    }
}
