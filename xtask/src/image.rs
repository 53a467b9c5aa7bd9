//! `cargo xtask image`: the router's OCI image, built with `deploy/Dockerfile` by podman (or
//! docker), labelled with the version, revision and date of this checkout.
//!
//! The Dockerfile's base images are build arguments with the public images as defaults. A
//! machine that cannot pull them (this kind of CI machine) asks for `--local-bases`: Debian
//! bookworm by debootstrap (the root file system is cached under `target/deploy-cache/`),
//! imported, plus Debian's nginx in place of the nginx image and this machine's own Rust
//! toolchains in place of the rust image (`deploy/bases/`). `--prebuilt BINARY` puts a binary
//! built outside into the image (the Dockerfile's `runtime-prebuilt` target) and skips the build
//! stage (the container tests use it: the in-image build takes many minutes).

use crate::cmd::{self, output, workspace_root};
use crate::prereq;
use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Args, Clone)]
pub struct ImageOptions {
    /// Name and tag of the image [default: task-router:<workspace version>].
    #[arg(long)]
    pub tag: Option<String>,
    /// Put this daemon binary into the image instead of building it in the build stage.
    #[arg(long, value_name = "BINARY")]
    pub prebuilt: Option<PathBuf>,
    /// Build the base images here instead of pulling rust:… and nginx:… (see deploy/bases/).
    /// They are named after the tag (`<name>-base-debian:<tag>`, `-base-webserver`,
    /// `-base-rust`) and kept: the webserver service runs the same nginx image.
    #[arg(long)]
    pub local_bases: bool,
    /// The container engine's command.
    #[arg(long, default_value = "podman")]
    pub engine: String,
}

/// The images one `image` run made.
#[derive(Debug, Clone)]
pub struct Built {
    pub image: String,
    /// The local base images, when `--local-bases`.
    pub bases: Vec<String>,
}

/// The workspace version (`[workspace.package] version` of the root Cargo.toml).
pub fn workspace_version() -> Result<String> {
    let path = workspace_root().join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut in_package = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "version"
        {
            return Ok(value.trim().trim_matches('"').to_string());
        }
    }
    bail!("no [workspace.package] version in {}", path.display())
}

/// `git` in the workspace; `None` outside a checkout.
fn git(args: &[&str]) -> Option<String> {
    output(Command::new("git").args(args).current_dir(workspace_root())).map(|s| s.trim().into())
}

pub fn run(opts: &ImageOptions) -> Result<()> {
    prereq::ensure_container_tools()?;
    let built = build(opts)?;
    println!("{}", built.image);
    for base in &built.bases {
        println!("{base}");
    }
    Ok(())
}

/// Runs `cmd` with its output on stderr, so stdout carries only the image names.
fn run_quietly(cmd: &mut Command) -> Result<()> {
    cmd.stdout(Stdio::from(std::io::stderr()));
    cmd::run(cmd)
}

pub fn build(opts: &ImageOptions) -> Result<Built> {
    let root = workspace_root();
    let version = workspace_version()?;
    let image = opts
        .tag
        .clone()
        .unwrap_or_else(|| format!("task-router:{version}"));
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // The commit's time: the binary's build date and the image's `created` label, so two
    // builds of one commit agree.
    let epoch = git(&["log", "-1", "--format=%ct"]).unwrap_or_default();
    let created = git(&["log", "-1", "--format=%cI"]).unwrap_or_default();

    let mut build_args = vec![
        ("VERSION", version),
        ("TASK_ROUTER_GIT_REVISION", revision),
        ("SOURCE_DATE_EPOCH", epoch),
        ("CREATED", created),
    ];
    let names = LocalNames::for_image(&image);
    let mut bases = Vec::new();
    if opts.local_bases {
        let tarball = debian_rootfs()?;
        import(&opts.engine, &tarball, &names.debian)?;
        bases.push(names.debian.clone());
        build_base(opts, "webserver", &names.webserver, &names.debian, &[])?;
        bases.push(names.webserver.clone());
        build_args.push(("RUNTIME_IMAGE", names.webserver.clone()));
        if opts.prebuilt.is_none() {
            build_base(opts, "rust", &names.rust, &names.debian, &rust_contexts()?)?;
            bases.push(names.rust.clone());
            build_args.push(("RUST_IMAGE", names.rust.clone()));
        }
    }
    let mut cmd = engine(&opts.engine);
    cmd.current_dir(&root).args(["build", "--network", "host"]);
    let staging = match &opts.prebuilt {
        Some(binary) => {
            let dir = stage_prebuilt(binary)?;
            cmd.args(["--target", "runtime-prebuilt", "--build-context"])
                .arg(format!("prebuilt-binary={}", dir.display()));
            Some(dir)
        }
        None => None,
    };
    if opts.engine.ends_with("podman") {
        // podman reads `<Dockerfile>.dockerignore` only from the context's root; no layer
        // cache, so a build leaves no untagged intermediate images behind.
        cmd.args([
            "--ignorefile",
            "deploy/Dockerfile.dockerignore",
            "--layers=false",
        ]);
    }
    for (name, value) in &build_args {
        cmd.arg("--build-arg").arg(format!("{name}={value}"));
    }
    cmd.args(["-f", "deploy/Dockerfile", "-t", &image, "."]);
    let result = run_quietly(&mut cmd).context("building the router image failed");
    if let Some(dir) = staging {
        let _ = std::fs::remove_dir_all(dir);
    }
    result?;
    Ok(Built { image, bases })
}

/// Names of the images a `--local-bases` build makes, derived from the image's.
struct LocalNames {
    debian: String,
    webserver: String,
    rust: String,
}

impl LocalNames {
    fn for_image(image: &str) -> Self {
        // `name:tag`, where name may hold a registry with a port (`host:5000/name`).
        let (name, tag) = match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t),
            _ => (image, "latest"),
        };
        let derived = |suffix: &str| format!("{name}-{suffix}:{tag}");
        Self {
            debian: derived("base-debian"),
            webserver: derived("base-webserver"),
            rust: derived("base-rust"),
        }
    }
}

/// The engine's command. podman gets the project's settings for this kind of machine
/// (`tests/deploy/containers.conf`: no rlimit raise, cgroupfs, runc; harmless elsewhere) unless
/// `CONTAINERS_CONF` names another file.
pub fn engine(program: &str) -> Command {
    let mut cmd = Command::new(program);
    if program.ends_with("podman") && std::env::var_os("CONTAINERS_CONF").is_none() {
        cmd.env(
            "CONTAINERS_CONF",
            workspace_root().join("tests/deploy/containers.conf"),
        );
    }
    cmd
}

/// A Debian bookworm minbase root file system as a tarball, made once by debootstrap and kept
/// in `target/deploy-cache/` (it changes only with Debian's point releases).
pub fn debian_rootfs() -> Result<PathBuf> {
    let cache = workspace_root().join("target/deploy-cache");
    let tarball = cache.join("debian-bookworm-minbase.tar");
    if tarball.exists() {
        return Ok(tarball);
    }
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create {}", cache.display()))?;
    let dir = cache.join(format!("rootfs.{}", std::process::id()));
    eprintln!("xtask: debootstrap of Debian bookworm (once, about two minutes)");
    let made = run_quietly(
        Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&dir)
            .arg("http://deb.debian.org/debian"),
    )
    .context("debootstrap failed (Debian package debootstrap)")
    .and_then(|()| {
        let partial = tarball.with_extension("tar.partial");
        tar(&dir, ".", &partial)?;
        std::fs::rename(&partial, &tarball)
            .with_context(|| format!("cannot move {} into place", partial.display()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    made.map(|()| tarball)
}

/// `member` of `dir` as the tar archive `out`.
fn tar(dir: &Path, member: &str, out: &Path) -> Result<()> {
    cmd::run(
        Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(out)
            .arg(member),
    )
}

/// `engine import` of a root file system tarball as `name`.
pub fn import(engine: &str, tarball: &Path, name: &str) -> Result<()> {
    run_quietly(
        self::engine(engine)
            .args(["import", "--change", "CMD [\"/bin/bash\"]"])
            .arg(tarball)
            .arg(name),
    )
    .with_context(|| format!("importing {} as {name} failed", tarball.display()))
}

/// Builds `deploy/bases/<which>.Containerfile` on `base` as `name`.
fn build_base(
    opts: &ImageOptions,
    which: &str,
    name: &str,
    base: &str,
    contexts: &[(&str, PathBuf)],
) -> Result<()> {
    let dir = workspace_root().join("deploy/bases");
    let mut cmd = engine(&opts.engine);
    cmd.current_dir(&dir).args(["build", "--network", "host"]);
    if opts.engine.ends_with("podman") {
        // One layer: what a step removes (the toolchains' docs) is not stored.
        cmd.arg("--squash");
    }
    for (context, path) in contexts {
        cmd.arg("--build-context")
            .arg(format!("{context}={}", path.display()));
    }
    cmd.arg("--build-arg")
        .arg(format!("BASE_IMAGE={base}"))
        .args(["-f", &format!("{which}.Containerfile"), "-t", name, "."]);
    run_quietly(&mut cmd).with_context(|| format!("building the local {which} base failed"))
}

/// The build contexts of `deploy/bases/rust.Containerfile`: this machine's toolchains.
fn rust_contexts() -> Result<Vec<(&'static str, PathBuf)>> {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let env_dir = |var: &str, default: &str| {
        std::env::var_os(var).map_or_else(|| home.join(default), PathBuf::from)
    };
    let contexts = vec![
        ("rustup", env_dir("RUSTUP_HOME", ".rustup")),
        ("cargo-bin", env_dir("CARGO_HOME", ".cargo").join("bin")),
        ("setup-cache", home.join(".cache/task-router")),
        ("certs", PathBuf::from("/etc/ssl/certs")),
    ];
    for (name, path) in &contexts {
        if !path.is_dir() {
            bail!(
                "{} (the {name} context of the local rust base) is missing: run `cargo xtask \
                 setup` first",
                path.display()
            );
        }
    }
    Ok(contexts)
}

/// A directory holding a copy of `binary` as `task-router`: the build context
/// `prebuilt-binary` of the Dockerfile's `runtime-prebuilt` stage.
fn stage_prebuilt(binary: &Path) -> Result<PathBuf> {
    let dir = workspace_root()
        .join("target/deploy-cache")
        .join(format!("prebuilt.{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let copy = dir.join("task-router");
    std::fs::copy(binary, &copy).with_context(|| format!("cannot copy {}", binary.display()))?;
    // A debug build's symbols are most of its size; a release build has none to strip.
    cmd::run(Command::new("strip").arg("--strip-debug").arg(&copy))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_follow_the_image_name() {
        let n = LocalNames::for_image("localhost/trtest-router:abc");
        assert_eq!(n.webserver, "localhost/trtest-router-base-webserver:abc");
        assert_eq!(n.rust, "localhost/trtest-router-base-rust:abc");
        let n = LocalNames::for_image("registry:5000/task-router");
        assert_eq!(n.debian, "registry:5000/task-router-base-debian:latest");
    }

    #[test]
    fn the_workspace_version_is_read() {
        let v = workspace_version().expect("version");
        assert!(v.split('.').count() >= 3, "{v}");
    }
}
