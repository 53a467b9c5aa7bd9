//! BPF syscalls aya 0.14 does not offer: reading a whole hash map in batches (one syscall per
//! few thousand entries instead of two per entry), for the conntrack sweeper.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

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
