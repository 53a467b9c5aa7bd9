//! The Debian package `cargo xtask dist` makes, installed on this machine for real with
//! `dpkg -i`: the binary runs and reports its build, the systemd unit is known and enabled
//! (this machine runs no systemd as PID 1, so the package's start step is skipped the way
//! Debian's helpers skip it in a container), the man pages, completions and the example
//! configuration are where Debian keeps them, and `dpkg --purge` removes every trace. The
//! package is purged on drop, also when the test fails: the machine is left as it was.

use router_tests::{require_root, workspace_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PACKAGE: &str = "task-router";

fn show(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn installed() -> bool {
    let out = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
}

/// Purges the package on drop.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let out = run("dpkg", &["--purge", PACKAGE]);
        if !out.status.success() {
            eprintln!("cleanup: dpkg --purge {PACKAGE}: {}", show(&out));
        }
    }
}

/// `cargo xtask dist --debug --no-image`: the package of the debug build `cargo xtask test`
/// made (a release build would take minutes more; the packaging is the same).
fn build_package() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let out = Command::new(target.join("debug/xtask"))
        .args(["dist", "--debug", "--no-image"])
        .output()
        .expect("run xtask (built by `cargo xtask`)");
    assert!(
        out.status.success(),
        "cargo xtask dist failed:\n{}",
        show(&out)
    );
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(PathBuf::from)
        .expect("the package path");
    assert!(
        deb.extension().is_some_and(|e| e == "deb") && deb.exists(),
        "{deb:?}"
    );
    deb
}

/// The package's files (`dpkg -L`).
fn files() -> Vec<String> {
    let out = run("dpkg", &["-L", PACKAGE]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_debian_package_installs_enables_its_unit_and_purges_cleanly() {
    require_root();
    assert!(
        !installed(),
        "{PACKAGE} is installed on this machine: the test installs and purges its own and \
         will not touch that one"
    );
    let started = std::time::Instant::now();
    let deb = build_package();
    eprintln!("package built in {:?}", started.elapsed());
    let info = run("dpkg-deb", &["--info", &deb.to_string_lossy()]);
    let info = show(&info);
    for field in ["Package: task-router", "Depends: ", "Section: net"] {
        assert!(info.contains(field), "{field} in:\n{info}");
    }
    for script in ["postinst", "prerm", "postrm"] {
        assert!(info.contains(script), "maintainer script {script}:\n{info}");
    }

    let guard = Installed;
    let out = run("dpkg", &["-i", &deb.to_string_lossy()]);
    assert!(out.status.success(), "dpkg -i:\n{}", show(&out));

    // The binary, with its build identity.
    let version = run("/usr/bin/task-router", &["--version"]);
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.status.success() && text.contains("program tag: task_router_tc "),
        "{}",
        show(&version)
    );
    // The unit, known to systemd and enabled the way dh_installsystemd enables it.
    let listed = show(&run(
        "systemctl",
        &["list-unit-files", "task-router.service"],
    ));
    assert!(
        listed.contains("task-router.service") && listed.contains("enabled"),
        "{listed}"
    );
    let unit = files()
        .into_iter()
        .find(|f| f.ends_with("/systemd/system/task-router.service"))
        .expect("the unit in the package");
    let text = std::fs::read_to_string(&unit).expect("unit");
    assert!(
        text.contains("\nExecStart=/usr/bin/task-router run\n"),
        "{text}"
    );
    let verify = run("systemd-analyze", &["verify", &unit]);
    assert!(
        verify.status.success(),
        "systemd-analyze verify:\n{}",
        show(&verify)
    );
    // Configuration (a conffile, secret-mode), docs, man pages, completions.
    let env = Path::new("/etc/task-router/runtime.env");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(env).expect("runtime.env").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let conffiles = show(&run("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]));
    assert!(
        conffiles.contains("/etc/task-router/runtime.env"),
        "{conffiles}"
    );
    let all = files();
    for wanted in [
        "/usr/share/man/man1/task-router.1.gz",
        "/usr/share/man/man1/task-router-run.1.gz",
        "/usr/share/bash-completion/completions/task-router",
        "/usr/share/zsh/vendor-completions/_task-router",
        "/usr/share/fish/vendor_completions.d/task-router.fish",
        "/usr/share/doc/task-router/runtime.env.example",
        "/usr/share/doc/task-router/copyright",
    ] {
        assert!(
            all.iter().any(|f| f == wanted),
            "{wanted} not in the package:\n{all:#?}"
        );
    }
    let page = Command::new("sh")
        .args(["-c", "zcat /usr/share/man/man1/task-router.1.gz"])
        .output()
        .expect("zcat");
    assert!(String::from_utf8_lossy(&page.stdout).contains(".TH task-router 1"));

    // Purge: nothing left, the unit no longer enabled.
    drop(guard);
    assert!(!installed(), "still installed after purge");
    for gone in ["/usr/bin/task-router", "/etc/task-router", unit.as_str()] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
    let listed = show(&run(
        "systemctl",
        &["list-unit-files", "task-router.service"],
    ));
    assert!(!listed.contains("enabled"), "{listed}");
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/task-router.service").exists());
    eprintln!("whole test {:?}", started.elapsed());
}
