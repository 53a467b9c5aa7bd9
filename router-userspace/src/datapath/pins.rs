//! What outlives the daemon: the state maps and the program links, pinned under `ROUTER_BPFFS`
//! so the kernel keeps forwarding while no daemon runs, and the next daemon adopts them.
//!
//! Layout: `<ROUTER_BPFFS>/layout-<LAYOUT_VERSION>/` holds one pin per state map (by its name,
//! [`maps::PINNED`]) and one per program link (`link-<hook>-<interface>`, [`LinkKind`]). The
//! version in the directory name is `router_common::LAYOUT_VERSION` of the build that pinned
//! them: a daemon finding another version there refuses to start and touches nothing (the maps'
//! keys and values would be read with the wrong layout). Maps of the right version are checked
//! once more against this build's object (type, key and value sizes, flags, entries), so a
//! layout change that forgot its version bump is refused too.
//!
//! Connection-table size (`ROUTER_MAX_CONNECTIONS`): an LRU map's size is fixed when it is
//! created. A pinned table at least as large as the configuration needs is adopted (the limit
//! the kernel enforces is the configured one); a smaller one is refused, since growing it means
//! a new, empty table, which cuts every established connection: that takes an explicit
//! `task-router uninstall` first. The half-open table and its admission ring are sized at load
//! time too (from `ROUTER_MAX_CONNECTIONS` and the CPUs); pinned ones of any size are adopted as
//! they are (the ring and the table were sized together by the daemon that pinned them).
//!
//! The maps not pinned: `CLOCK` (scratch space of the clock program), `ALLOW_KEY` (scratch
//! space of the client allow-list look-up), `OPEN_ENTRIES` (scratch space of a connection's
//! opening), `PEER_DEVS` (read from
//! the kernel's interfaces by each daemon before it attaches; while no daemon runs, the last
//! set stays with the programs using it) and aya-log's ring buffer (each daemon reads the
//! records of the programs it loaded).

use super::DatapathError;
use super::object::maps;
use super::sys;
use std::path::{Path, PathBuf};

/// `f_type` of a bpffs mount (`BPF_FS_MAGIC`, linux/magic.h).
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const LAYOUT_PREFIX: &str = "layout-";
const LINK_PREFIX: &str = "link-";

/// The name of the directory holding the pins of layout `version`.
pub fn layout_dir_name(version: u32) -> String {
    format!("{LAYOUT_PREFIX}{version}")
}

/// The layout version of a directory named by [`layout_dir_name`].
pub fn parse_layout_dir(name: &str) -> Option<u32> {
    name.strip_prefix(LAYOUT_PREFIX)?.parse().ok()
}

/// The hook a pinned link attaches a program to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkKind {
    /// TC ingress (TCX link).
    Tc,
    /// Native (driver) XDP.
    Xdp,
    /// Generic (skb) XDP.
    XdpGeneric,
}

impl LinkKind {
    pub const ALL: [LinkKind; 3] = [LinkKind::Tc, LinkKind::Xdp, LinkKind::XdpGeneric];

    pub const fn as_str(self) -> &'static str {
        match self {
            LinkKind::Tc => "tc",
            LinkKind::Xdp => "xdp",
            LinkKind::XdpGeneric => "xdpgeneric",
        }
    }

    fn parse(s: &str) -> Option<LinkKind> {
        LinkKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The pin file name of the `kind` link on `interface`.
pub fn link_file_name(kind: LinkKind, interface: &str) -> String {
    format!("{LINK_PREFIX}{}-{interface}", kind.as_str())
}

/// `(kind, interface)` of a link pin file name.
pub fn parse_link_file_name(name: &str) -> Option<(LinkKind, String)> {
    let rest = name.strip_prefix(LINK_PREFIX)?;
    let (kind, interface) = rest.split_once('-')?;
    Some((LinkKind::parse(kind)?, interface.to_string()))
}

fn pin_io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DatapathError {
    let path = path.to_path_buf();
    move |source| DatapathError::Pin {
        operation,
        path,
        source,
    }
}

/// The filesystem type of `path` (`statfs`'s `f_type`).
fn fs_type(path: &Path) -> std::io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: all-zero is a valid `statfs`; `c` is NUL-terminated and outlives the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a live, writable `statfs`.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

/// Checks that `root` is on a bpffs mount, or would be created on one (its nearest existing
/// ancestor is): pins cannot live anywhere else.
pub fn check_bpffs(root: &Path) -> Result<(), DatapathError> {
    let mut probe = root;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    let found = fs_type(probe).map_err(pin_io("statfs", probe))?;
    if found == BPF_FS_MAGIC {
        return Ok(());
    }
    Err(DatapathError::NotBpffs {
        dir: root.to_path_buf(),
        checked: probe.to_path_buf(),
        found: format!("{found:#x}"),
    })
}

/// The pin directory of this build's layout.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
    dir: PathBuf,
}

impl PinDir {
    /// Checks `root` (on bpffs; no pins of another layout version, nothing task-router did not
    /// create) and creates `root/layout-<version>` if needed. Refuses without touching anything
    /// when another layout is pinned there.
    pub fn prepare(root: &Path, version: u32) -> Result<PinDir, DatapathError> {
        check_bpffs(root)?;
        let own = layout_dir_name(version);
        if root.exists() {
            let entries = std::fs::read_dir(root).map_err(pin_io("list", root))?;
            for entry in entries {
                let entry = entry.map_err(pin_io("list", root))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == own {
                    continue;
                }
                return Err(match parse_layout_dir(&name) {
                    Some(found) => DatapathError::IncompatibleLayout {
                        dir: root.to_path_buf(),
                        found,
                        expected: version,
                    },
                    None => DatapathError::ForeignPin {
                        dir: root.to_path_buf(),
                        entry: name,
                    },
                });
            }
        }
        let dir = root.join(own);
        std::fs::create_dir_all(&dir).map_err(pin_io("create", &dir))?;
        Ok(PinDir {
            root: root.to_path_buf(),
            dir,
        })
    }

    /// The directory holding the pins.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn link_path(&self, kind: LinkKind, interface: &str) -> PathBuf {
        self.dir.join(link_file_name(kind, interface))
    }

    /// The state maps already pinned (a daemon ran here before).
    pub fn pinned_maps(&self) -> Vec<&'static str> {
        maps::PINNED
            .iter()
            .copied()
            .filter(|name| self.map_path(name).exists())
            .collect()
    }

    /// The links pinned, by kind and interface.
    pub fn pinned_links(&self) -> Result<Vec<(LinkKind, String)>, DatapathError> {
        let mut links = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(pin_io("list", &self.dir))? {
            let entry = entry.map_err(pin_io("list", &self.dir))?;
            if let Some(link) = parse_link_file_name(&entry.file_name().to_string_lossy()) {
                links.push(link);
            }
        }
        links.sort();
        Ok(links)
    }

    /// Detaches and unpins every link, unpins every map, removes the directories. Returns what
    /// it removed, one line each.
    pub fn remove_all(&self) -> Result<Vec<String>, DatapathError> {
        let mut removed = remove_layout_dir(&self.dir)?;
        if remove_dir_if_empty(&self.root)? {
            removed.push(format!("directory {}", self.root.display()));
        }
        Ok(removed)
    }
}

fn remove_dir_if_empty(dir: &Path) -> Result<bool, DatapathError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(false),
        Err(e) => Err(pin_io("remove", dir)(e)),
    }
}

/// Empties one `layout-N` directory (links detached first, so nothing forwards with
/// half-removed state) and removes it.
fn remove_layout_dir(dir: &Path) -> Result<Vec<String>, DatapathError> {
    let mut removed = Vec::new();
    if !dir.exists() {
        return Ok(removed);
    }
    let mut links = Vec::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(pin_io("list", dir))? {
        let entry = entry.map_err(pin_io("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if parse_link_file_name(&name).is_some() {
            links.push(entry.path());
        } else {
            others.push(entry.path());
        }
    }
    links.sort();
    others.sort();
    for path in links {
        // Detached explicitly: a process still holding the link (a running daemon) would
        // otherwise keep it attached after the pin is gone.
        let detail = match sys::detach_pinned_link(&path) {
            Ok(info) => format!(
                "link {} (id {}, program id {}) detached and unpinned",
                path.display(),
                info.id,
                info.prog_id
            ),
            Err(e) => {
                tracing::warn!(link = %path.display(), error = %e, "detaching a pinned link failed; unpinning it");
                format!("link {} unpinned", path.display())
            }
        };
        std::fs::remove_file(&path).map_err(pin_io("unpin", &path))?;
        removed.push(detail);
    }
    for path in others {
        if path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(pin_io("remove", &path))?;
        } else {
            std::fs::remove_file(&path).map_err(pin_io("unpin", &path))?;
        }
        removed.push(format!("map {} unpinned", path.display()));
    }
    std::fs::remove_dir(dir).map_err(pin_io("remove", dir))?;
    removed.push(format!("directory {}", dir.display()));
    Ok(removed)
}

/// `task-router uninstall`'s datapath part: detaches and unpins everything under `root`, of
/// any layout version (an old version's pins are what an upgrade refuses to adopt). Entries
/// task-router did not create are left and named. Idempotent.
pub fn uninstall(root: &Path) -> Result<Vec<String>, DatapathError> {
    let mut done = Vec::new();
    if !root.exists() {
        return Ok(done);
    }
    check_bpffs(root)?;
    for entry in std::fs::read_dir(root).map_err(pin_io("list", root))? {
        let entry = entry.map_err(pin_io("list", root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if parse_layout_dir(&name).is_some() && entry.path().is_dir() {
            done.extend(remove_layout_dir(&entry.path())?);
        } else {
            tracing::warn!(entry = %entry.path().display(), "left in place: not created by task-router");
        }
    }
    if remove_dir_if_empty(root)? {
        done.push(format!("directory {}", root.display()));
    }
    Ok(done)
}

/// `BPF_F_RDONLY_PROG | BPF_F_WRONLY_PROG`: set by the kernel on some map types.
const KERNEL_SET_FLAGS: u32 = (1 << 7) | (1 << 8);

/// A pinned map's shape that differs from this build's object, if any (`None`: adoptable).
/// `min_entries` replaces an exact entry count for maps sized at load time (the connection
/// table).
pub fn shape_mismatch(
    pinned: &aya::maps::MapInfo,
    expected: &aya_obj::Map,
    min_entries: Option<u32>,
) -> Option<String> {
    let pinned_type = pinned.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    let mut differences = Vec::new();
    if pinned_type != expected.map_type() {
        differences.push(format!(
            "type {pinned_type} (expected {})",
            expected.map_type()
        ));
    }
    if pinned.key_size() != expected.key_size() {
        differences.push(format!(
            "key size {} (expected {})",
            pinned.key_size(),
            expected.key_size()
        ));
    }
    if pinned.value_size() != expected.value_size() {
        differences.push(format!(
            "value size {} (expected {})",
            pinned.value_size(),
            expected.value_size()
        ));
    }
    // The kernel adds program-access flags to some map types itself (a devmap is read-only
    // for programs): compare what the object asks for.
    let pinned_flags =
        pinned.map_flags() & !KERNEL_SET_FLAGS | expected.map_flags() & KERNEL_SET_FLAGS;
    if pinned_flags != expected.map_flags() {
        differences.push(format!(
            "flags {:#x} (expected {:#x})",
            pinned.map_flags(),
            expected.map_flags()
        ));
    }
    match min_entries {
        Some(_) => {}
        None if pinned.max_entries() != expected.max_entries() => differences.push(format!(
            "{} entries (expected {})",
            pinned.max_entries(),
            expected.max_entries()
        )),
        None => {}
    }
    (!differences.is_empty()).then(|| differences.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip() {
        assert_eq!(layout_dir_name(3), "layout-3");
        assert_eq!(parse_layout_dir("layout-3"), Some(3));
        assert_eq!(parse_layout_dir("layout-x"), None);
        assert_eq!(parse_layout_dir("CT4"), None);
        for kind in LinkKind::ALL {
            let name = link_file_name(kind, "veth-a.1");
            assert_eq!(
                parse_link_file_name(&name),
                Some((kind, "veth-a.1".to_string()))
            );
        }
        assert_eq!(parse_link_file_name("CT4"), None);
        assert_eq!(parse_link_file_name("link-foo-eth0"), None);
        // Map names never look like link pins.
        for map in maps::PINNED {
            assert!(parse_link_file_name(map).is_none());
            assert!(map.len() <= 15);
        }
    }

    #[test]
    fn a_directory_outside_bpffs_is_refused() {
        let dir = std::env::temp_dir().join("task-router-not-bpffs");
        match check_bpffs(&dir) {
            Err(DatapathError::NotBpffs { dir: d, .. }) => assert_eq!(d, dir),
            other => panic!("expected NotBpffs, got {other:?}"),
        }
    }
}
