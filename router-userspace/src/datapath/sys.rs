//! BPF syscalls aya 0.14 does not offer: reading a whole hash map in batches (one syscall per
//! few thousand entries instead of two per entry), for the conntrack sweeper; and forcing a
//! pinned link off its hook (`BPF_LINK_DETACH`), for `task-router uninstall`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_DETACH: libc::c_long = 34;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live `repr(C)` prefix of `union bpf_attr` for `cmd`, and the size
    // passed is its own; the kernel zero-extends shorter attributes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The `obj_pin`/`obj_get` member of `union bpf_attr`.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The start of `struct bpf_link_info` (the union's first members cover XDP's and TCX's
/// `ifindex`), with room for the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    _pad: u32,
    /// XDP and TCX links: the interface; 0 once the interface is gone.
    pub ifindex: u32,
    _rest: [u32; 15],
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The kernel's description of link `fd`.
pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut info = LinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// The `link_detach` member of `union bpf_attr`.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Detaches the link pinned at `path` from its hook, whoever else holds it (the pin stays;
/// the caller removes it). Returns what the link was.
pub fn detach_pinned_link(path: &Path) -> io::Result<LinkInfo> {
    let fd = obj_get(path)?;
    let info = link_info(std::os::fd::AsFd::as_fd(&fd))?;
    let mut attr = LinkDetachAttr {
        link_fd: fd.as_raw_fd() as u32,
    };
    match bpf(BPF_LINK_DETACH, &mut attr) {
        Ok(_) => Ok(info),
        // Already detached (its interface went away).
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => Ok(info),
        Err(e) => Err(e),
    }
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `f` for every entry of the hash map `fd` (keys `K`, values `V`, both plain `repr(C)`
/// data matching the map's sizes), reading `chunk` entries per syscall. Entries changed while
/// it runs may be seen in either state.
pub fn for_each_entry<K: Copy + Default, V: Copy + Default>(
    fd: BorrowedFd<'_>,
    chunk: usize,
    mut f: impl FnMut(&K, &V),
) -> io::Result<()> {
    let mut chunk = chunk.max(1);
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // Hash maps use a bucket index as the batch token.
    let mut token: u32 = 0;
    let mut next: u32 = 0;
    let mut started = false;
    loop {
        let mut attr = BatchAttr {
            in_batch: if started {
                &token as *const u32 as u64
            } else {
                0
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` points at live buffers of `chunk` keys and values of the map's sizes
        // (the caller's contract) and at the two tokens, all outliving the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(chunk);
        for i in 0..filled {
            f(&keys[i], &values[i]);
        }
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // One bucket holds more entries than fit: retry it with more room.
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && filled == 0 => {
                chunk *= 2;
                keys.resize(chunk, K::default());
                values.resize(chunk, V::default());
                continue;
            }
            Some(e) => return Err(e),
        }
        token = next;
        started = true;
    }
}
