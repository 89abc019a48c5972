//! When cluster-init is the init of the whole machine (a VM booted with `rdinit=`, a microVM),
//! not of a container: it must not exit, since the kernel panics when PID 1 of the initial PID
//! namespace does ("Attempted to kill init"). It powers the machine off instead.

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO`).
const INITIAL_PID_NS: &str = "pid:[4026531836]";

/// As PID 1 with no `/proc` (a VM's initramfs: a container runtime always mounts one), mounts
/// it: the cgroup budget, notify senders' ancestry and memory measurements all read it.
pub fn mount_proc_if_missing() {
    if std::process::id() != 1 || std::path::Path::new("/proc/self").exists() {
        return;
    }
    let _ = std::fs::create_dir_all("/proc");
    // SAFETY: mount with NUL-terminated strings and no data.
    unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        );
    }
}

/// PID 1 of the initial PID namespace: a machine's init, not a container's.
pub fn is_init() -> bool {
    std::process::id() == 1
        && std::fs::read_link("/proc/self/ns/pid").is_ok_and(|l| l.as_os_str() == INITIAL_PID_NS)
}

/// Syncs and powers off, after saying with which status the pool ended. Does not return.
pub fn power_off(code: i32) -> ! {
    crate::sink::stderr().line(
        format!("cluster-init: the machine's init is done (exit {code}): powering off").as_bytes(),
    );
    crate::sink::stderr().flush();
    // SAFETY: sync and reboot take no pointers; RB_POWER_OFF does not return on success.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Without CAP_SYS_BOOT nothing else is left to do.
    std::process::exit(code)
}
