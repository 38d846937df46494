//! The system-call rule that keeps setuid and setgid files from leaving a
//! sandbox, shared by every runtime.
//!
//! # Why
//!
//! A sandbox's workspace is the caller's own directory. The native runtime
//! maps the sandbox user onto the caller (through an ID-mapped mount for a
//! root caller) and Docker and Podman bind-mount it with the container's
//! root as the host's: a file the command makes setuid there is setuid to
//! the caller — to root, for a root caller — on the host, where any user
//! who can reach the directory may run it. The same goes for a setgid file
//! and for a setgid directory (what is created in it takes its group).
//!
//! Mounting the workspace `nosuid` inside the sandbox would not help the
//! host: the flag belongs to that one mount, and the host reaches the same
//! inode through its own mounts, which honour the bit. So the bit must
//! never be set at all, whatever the mount.
//!
//! # What is refused
//!
//! With `EPERM`, every call carrying `S_ISUID` or `S_ISGID` in a mode:
//! `chmod`, `fchmod`, `fchmodat`, `fchmodat2`; `open`, `openat` with
//! `O_CREAT` or `O_TMPFILE` (the mode is ignored otherwise) and `creat`;
//! `mknod`, `mknodat` (a regular file can be made that way); `mkdir`,
//! `mkdirat` (Linux drops both bits from `mkdir`'s mode, and `mkdir -m`
//! sets them with a `chmod` afterwards, but another kernel, gVisor's, need
//! not). And `io_uring`, whose `IORING_OP_OPENAT` reads its mode from
//! memory that no filter sees.
//!
//! With `ENOSYS`, `openat2`: its mode is in a structure a filter cannot
//! read, and C libraries fall back to `openat` when the kernel lacks it.
//!
//! Not covered, on purpose: a directory created inside a setgid directory
//! inherits the bit from the kernel whatever the mode asked for; only a
//! directory the host already made setgid can start that. File
//! capabilities (`security.capability`) need `CAP_SETFCAP`, which no
//! sandboxed command holds.
//!
//! The native runtime adds [`refused`] to its own deny program and drops
//! [`unsupported`] from its allow-list; container workloads install
//! [`SetidFilter`] just before they execute the command.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SetidFilterError {
    /// No seccomp support for this architecture in `seccompiler`.
    #[error("no system-call filter for this architecture: {0}")]
    Architecture(String),
    /// The rules did not compile.
    #[error("cannot build the setuid/setgid system-call filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the setuid/setgid system-call filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// The mode bits no file of a sandbox may get.
const SETID_BITS: [u64; 2] = [libc::S_ISUID as u64, libc::S_ISGID as u64];

/// The `open` flags under which its mode is used.
const CREATING: [u64; 2] = [libc::O_CREAT as u64, libc::O_TMPFILE as u64];

/// On x86_64, the x32 ABI's numbers of the same calls (the common ones
/// plus this bit): a filter checking only the 64-bit numbers would let
/// them through where the kernel has x32 enabled. Docker's default
/// profile allows x32 calls.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// Where a call's mode (and, for `open`, its flags) sit among its
/// arguments.
struct ModeCall {
    nr: libc::c_long,
    mode_arg: u8,
    flags_arg: Option<u8>,
}

const fn mode_at(nr: libc::c_long, mode_arg: u8) -> ModeCall {
    ModeCall {
        nr,
        mode_arg,
        flags_arg: None,
    }
}

const fn open_like(nr: libc::c_long, flags_arg: u8, mode_arg: u8) -> ModeCall {
    ModeCall {
        nr,
        mode_arg,
        flags_arg: Some(flags_arg),
    }
}

/// Every call that sets a mode, on every architecture.
const MODE_CALLS: &[ModeCall] = &[
    mode_at(libc::SYS_fchmod, 1),
    mode_at(libc::SYS_fchmodat, 2),
    mode_at(libc::SYS_fchmodat2, 2),
    open_like(libc::SYS_openat, 2, 3),
    mode_at(libc::SYS_mkdirat, 2),
    mode_at(libc::SYS_mknodat, 2),
];

/// The legacy ones x86_64 still has.
#[cfg(target_arch = "x86_64")]
const LEGACY_MODE_CALLS: &[ModeCall] = &[
    mode_at(libc::SYS_chmod, 1),
    open_like(libc::SYS_open, 1, 2),
    mode_at(libc::SYS_creat, 1),
    mode_at(libc::SYS_mkdir, 1),
    mode_at(libc::SYS_mknod, 1),
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY_MODE_CALLS: &[ModeCall] = &[];

/// Refused whatever their arguments.
const ALWAYS_REFUSED: &[libc::c_long] = &[
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// Answered `ENOSYS`.
const UNSUPPORTED: &[libc::c_long] = &[libc::SYS_openat2];

/// A call's number, and on x86_64 its x32 number too.
fn numbers(nr: libc::c_long) -> Vec<i64> {
    #[allow(unused_mut)] // nothing to add elsewhere
    let mut all = vec![nr];
    #[cfg(target_arch = "x86_64")]
    all.push(nr | X32_SYSCALL_BIT);
    all
}

fn masked(arg: u8, bits: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(bits),
        bits,
    )
}

/// The rules whose match must fail with `EPERM`, by system-call number
/// (an empty list: whatever the arguments). A filter merging them into
/// its own must keep an unconditional entry unconditional.
pub fn refused() -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules = BTreeMap::new();
    for call in MODE_CALLS.iter().chain(LEGACY_MODE_CALLS) {
        // One rule per bit (and per creating flag): the filter ORs rules,
        // and ANDs the conditions within one.
        let mut per_call = Vec::new();
        for bit in SETID_BITS {
            match call.flags_arg {
                None => per_call.push(SeccompRule::new(vec![masked(call.mode_arg, bit)?])?),
                Some(flags_arg) => {
                    for flag in CREATING {
                        per_call.push(SeccompRule::new(vec![
                            masked(flags_arg, flag)?,
                            masked(call.mode_arg, bit)?,
                        ])?);
                    }
                }
            }
        }
        for nr in numbers(call.nr) {
            rules.insert(nr, per_call.clone());
        }
    }
    for nr in ALWAYS_REFUSED.iter().flat_map(|nr| numbers(*nr)) {
        rules.insert(nr, Vec::new());
    }
    Ok(rules)
}

/// The calls to answer with `ENOSYS` (on x86_64, with their x32 numbers).
pub fn unsupported() -> Vec<i64> {
    UNSUPPORTED.iter().flat_map(|nr| numbers(*nr)).collect()
}

/// The rule as programs of its own, for a sandbox that has no filter to
/// add it to (a container's workload).
#[derive(Debug)]
pub struct SetidFilter {
    refuse: BpfProgram,
    unsupported: BpfProgram,
}

impl SetidFilter {
    /// Compiles the programs for the running architecture.
    pub fn build() -> Result<SetidFilter, SetidFilterError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|e| SetidFilterError::Architecture(e.to_string()))?;
        let refuse = SeccompFilter::new(
            refused()?,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )?;
        let unsupported = SeccompFilter::new(
            unsupported()
                .into_iter()
                .map(|nr| (nr, Vec::new()))
                .collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )?;
        Ok(SetidFilter {
            refuse: refuse.try_into()?,
            unsupported: unsupported.try_into()?,
        })
    }

    /// Installs the programs on the calling thread, which keeps them
    /// across `execve` and hands them to every process it starts. Sets
    /// `no_new_privs`, which the kernel requires of a process without
    /// `CAP_SYS_ADMIN`.
    pub fn install(&self) -> Result<(), SetidFilterError> {
        for program in [&self.refuse, &self.unsupported] {
            seccompiler::apply_filter(program)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_programs_compile_for_this_machine() {
        let filter = SetidFilter::build().unwrap_or_else(|e| panic!("{e}"));
        assert!(!filter.refuse.is_empty());
        assert!(!filter.unsupported.is_empty());
    }

    #[test]
    fn every_mode_setting_call_is_conditional_and_io_uring_is_not() {
        let rules = refused().unwrap_or_else(|e| panic!("{e}"));
        for call in MODE_CALLS.iter().chain(LEGACY_MODE_CALLS) {
            let per_call = &rules[&call.nr];
            // Refusing a mode call whatever its arguments would break
            // every chmod; refusing none would let the bits through.
            let expected = if call.flags_arg.is_some() { 4 } else { 2 };
            assert_eq!(per_call.len(), expected, "syscall {}", call.nr);
        }
        assert!(rules[&libc::SYS_io_uring_setup].is_empty());
        assert!(!rules.contains_key(&libc::SYS_openat2));
    }

    /// Installs the filter on this test's own thread (a filter binds
    /// only the thread that installs it, and the threads it starts) and
    /// checks what it refuses and what it still lets through.
    #[test]
    fn installed_it_refuses_the_bits_and_nothing_else() {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("f");
        let created = std::fs::File::create(&file).unwrap_or_else(|e| panic!("{e}"));
        SetidFilter::build()
            .and_then(|f| f.install())
            .unwrap_or_else(|e| panic!("{e}"));
        let eperm = |r: std::io::Result<()>, what: &str| {
            assert_eq!(
                r.map_err(|e| e.raw_os_error()),
                Err(Some(libc::EPERM)),
                "{what}"
            );
        };
        let mode = std::fs::Permissions::from_mode;
        created
            .set_permissions(mode(0o755))
            .unwrap_or_else(|e| panic!("an ordinary fchmod: {e}"));
        eperm(created.set_permissions(mode(0o4755)), "fchmod u+s");
        eperm(std::fs::set_permissions(&file, mode(0o2755)), "chmod g+s");
        // Without O_CREAT the mode means nothing, and is not looked at.
        std::fs::OpenOptions::new()
            .read(true)
            .mode(0o4755)
            .open(&file)
            .unwrap_or_else(|e| panic!("an open without O_CREAT: {e}"));
        let create = |name: &str, bits: u32| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(bits)
                .open(dir.path().join(name))
                .map(drop)
        };
        eperm(create("g", 0o4755), "open O_CREAT 04755");
        eperm(create("h", 0o2755), "open O_CREAT 02755");
        create("i", 0o755).unwrap_or_else(|e| panic!("an ordinary create: {e}"));
        let mkdir = |bits: u32| {
            std::fs::DirBuilder::new()
                .mode(bits)
                .create(dir.path().join("d"))
        };
        eperm(mkdir(0o2755), "mkdir 02755");
        mkdir(0o755).unwrap_or_else(|e| panic!("an ordinary mkdir: {e}"));
        let openat2 = rustix::fs::openat2(
            rustix::fs::CWD,
            &file,
            rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
            rustix::fs::ResolveFlags::empty(),
        );
        assert_eq!(openat2.err(), Some(rustix::io::Errno::NOSYS), "openat2");
    }
}
