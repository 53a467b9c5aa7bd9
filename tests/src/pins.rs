//! A bpffs directory a test owns for the daemon's pins, removed on drop with everything in it
//! detached (as `task-router uninstall` does), also when the test failed or a daemon was
//! killed.
//!
//! Not under `/sys/fs/bpf`: `ip netns exec` (how the tests start a daemon in a namespace)
//! mounts a fresh sysfs over `/sys` in a mount namespace of its own, which hides the host's
//! bpffs there. So each `PinRoot` is a bpffs instance of its own, mounted under
//! `/run/task-router-tests/` (left alone by `ip netns exec`, seen by the host's `bpftool`), and
//! the pins go in a `pins` directory inside it (created by the daemon).

use std::path::{Path, PathBuf};

const MOUNTS: &str = "/run/task-router-tests";

pub struct PinRoot {
    mount: PathBuf,
    root: PathBuf,
}

impl PinRoot {
    /// A new bpffs mount; [`PinRoot::path`] is a directory in it the daemon creates.
    pub fn new(prefix: &str) -> PinRoot {
        let mount = Path::new(MOUNTS).join(crate::netns::unique(prefix));
        std::fs::create_dir_all(&mount)
            .unwrap_or_else(|e| panic!("create {}: {e}", mount.display()));
        let pins = PinRoot {
            root: mount.join("pins"),
            mount,
        };
        nix::mount::mount(
            Some("bpf"),
            &pins.mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .unwrap_or_else(|e| panic!("mount bpffs at {}: {e}", pins.mount.display()));
        pins
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The directory of the current layout's pins.
    pub fn layout_dir(&self) -> PathBuf {
        self.root
            .join(router_userspace::datapath::pins::layout_dir_name(
                router_common::LAYOUT_VERSION,
            ))
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        if let Err(e) = router_userspace::datapath::pins::uninstall(&self.root) {
            eprintln!(
                "cleanup {}: {}",
                self.root.display(),
                router_userspace::error::error_chain(&e)
            );
        }
        // Unmounting the instance releases whatever is still pinned in it.
        if let Err(e) = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cleanup: unmount {}: {e}", self.mount.display());
        }
        if let Err(e) = std::fs::remove_dir(&self.mount) {
            eprintln!("cleanup {}: {e}", self.mount.display());
        }
    }
}
