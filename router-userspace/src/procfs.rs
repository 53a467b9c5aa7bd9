//! What `/proc` tells about other processes: their ids and the files they hold open. Best
//! effort by nature: a process may end between two reads, and without the rights to read
//! another process's descriptors it simply holds nothing; so these answer "none" rather than
//! fail.

use std::path::Path;

/// The ids of the processes running now (none when `/proc` cannot be read).
pub fn pids() -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// Whether process `pid` has a descriptor open on a target `is_target` accepts (the target as
/// `readlink` of `/proc/<pid>/fd/<n>` gives it: a path, or `socket:[<inode>]`).
pub fn holds_open(pid: u32, is_target: impl Fn(&Path) -> bool) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| is_target(&target)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_listed_and_holds_what_it_opened() {
        let me = std::process::id();
        assert!(pids().contains(&me));
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let path = file.path().to_path_buf();
        assert!(holds_open(me, |target| target == path));
        assert!(!holds_open(me, |target| target == Path::new("/nonexistent/x")));
    }
}
