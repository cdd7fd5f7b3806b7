//! `kiln run`: docker run's everyday flags mapped onto [`crate::run::RunRequest`].

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;

use super::terminal;
use crate::oci::Store;
use crate::platform::Platform;
use crate::engine::vm_session::ExecIo;
use crate::engine::vm_session::SessionError;
use crate::run::{run_image, RunError, RunRequest, Volume};
use crate::vm::client::ClientError;
use crate::vm::VmError;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Platform of a multi-platform image
    #[arg(long)]
    pub platform: Option<Platform>,
    /// Publish a guest TCP port on the host's 127.0.0.1: HOST:GUEST (or PORT for both)
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Share a host directory live: HOST:GUEST[:ro|rw] (HOST absolute or ./relative)
    #[arg(short = 'v', long = "volume")]
    pub volume: Vec<String>,
    /// Share a host directory, long form: type=bind,source=HOST,target=GUEST[,readonly]
    #[arg(long)]
    pub mount: Vec<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to take it from kiln's environment)
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Read environment variables from a file: KEY=VALUE lines, KEY alone
    /// takes kiln's value, # starts a comment (docker's format; repeatable,
    /// before -e)
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<std::path::PathBuf>,
    /// Remove the container when it exits. Always so: kiln keeps no
    /// containers (each run's VM and disk are discarded), so --rm=false is refused
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), value_name = "BOOL")]
    pub rm: Option<bool>,
    /// Run in the background: not supported (kiln keeps no containers to
    /// stop or read logs from later); run `kiln run ... &` from the shell instead
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep standard input open
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Overwrite the image's ENTRYPOINT
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Username or UID[:GID] to run as
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Guest memory, MiB
    #[arg(long, default_value_t = 2048)]
    pub memory: u64,
    /// Guest CPUs (default: the host's, at most 4)
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Pull the image: missing (when the store lacks it for the platform), always or never
    #[arg(long, default_value = "missing", value_parser = ["missing", "always", "never"])]
    pub pull: String,
    #[command(flatten)]
    pub registry: super::image::RegistryArgs,
    pub image: String,
    /// Command and arguments (replace the image's CMD)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn parse_publish(spec: &str) -> anyhow::Result<(u16, u16)> {
    let spec = spec.strip_prefix("127.0.0.1:").unwrap_or(spec);
    let spec = spec.strip_suffix("/tcp").unwrap_or(spec);
    let port = |s: &str| s.parse::<u16>().with_context(|| format!("-p {spec}: {s:?} is not a port"));
    match spec.split_once(':') {
        Some((h, g)) => Ok((port(h)?, port(g)?)),
        None => {
            let p = port(spec)?;
            Ok((p, p))
        }
    }
}

/// A share as written on the command line, before its host path is checked.
#[derive(Debug, PartialEq, Eq)]
struct ShareSpec {
    host: String,
    target: String,
    readonly: bool,
}

/// `-v HOST:GUEST[:OPTIONS]` with a host path (docker's named and anonymous
/// volumes have no place in a disposable VM).
fn parse_volume(spec: &str) -> anyhow::Result<ShareSpec> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, target, options) = match parts.as_slice() {
        [host, target] => (*host, *target, ""),
        [host, target, options] => (*host, *target, *options),
        [_] => bail!("-v {spec}: give HOST:GUEST (anonymous volumes are not supported)"),
        _ => bail!("-v {spec}: expected HOST:GUEST[:ro|rw]"),
    };
    if !(host.starts_with('/') || host == "." || host.starts_with("./") || host.starts_with("../")) {
        bail!("-v {spec}: {host:?} is not a host path: give an absolute path or one starting with ./ (named volumes are not supported)");
    }
    let mut readonly = false;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        readonly = match option {
            "ro" | "readonly" => true,
            "rw" => false,
            other => bail!("-v {spec}: unknown option {other:?} (expected ro or rw)"),
        };
    }
    Ok(ShareSpec { host: host.to_string(), target: check_target(spec, "-v", target)?, readonly })
}

/// `--mount type=bind,source=HOST,target=GUEST[,readonly]`, docker's long form.
fn parse_mount(spec: &str) -> anyhow::Result<ShareSpec> {
    let (mut kind, mut host, mut target, mut readonly) = (None, None, None, false);
    for field in spec.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (field, None),
        };
        match (key, value) {
            ("type", Some(v)) => kind = Some(v),
            ("source" | "src", Some(v)) => host = Some(v),
            ("target" | "destination" | "dst", Some(v)) => target = Some(v),
            ("readonly" | "ro", None | Some("true" | "1")) => readonly = true,
            ("readonly" | "ro", Some("false" | "0")) => readonly = false,
            _ => bail!("--mount {spec}: unknown field {field:?} (expected type=bind, source=, target= and readonly)"),
        }
    }
    match kind {
        Some("bind") => {}
        Some(other) => bail!("--mount {spec}: type={other} is not supported, only type=bind"),
        None => bail!("--mount {spec}: give type=bind (volumes are not supported)"),
    }
    let host = host.filter(|h| !h.is_empty()).with_context(|| format!("--mount {spec}: source= (the host directory) is missing"))?;
    let target = target.with_context(|| format!("--mount {spec}: target= (the path in the container) is missing"))?;
    Ok(ShareSpec { host: host.to_string(), target: check_target(spec, "--mount", target)?, readonly })
}

/// The container path of a share: absolute, and not the root itself.
fn check_target(spec: &str, flag: &str, target: &str) -> anyhow::Result<String> {
    if !target.starts_with('/') {
        bail!("{flag} {spec}: the container path {target:?} must be absolute");
    }
    let trimmed = target.trim_end_matches('/');
    if trimmed.is_empty() {
        bail!("{flag} {spec}: cannot mount over the container's root (/)");
    }
    Ok(trimmed.to_string())
}

/// All shares of `-v` and `--mount`, each host directory checked and made absolute.
fn volumes(args: &RunArgs) -> anyhow::Result<Vec<Volume>> {
    let specs = args.volume.iter().map(|v| ("-v", v, parse_volume(v)));
    let specs = specs.chain(args.mount.iter().map(|m| ("--mount", m, parse_mount(m))));
    let mut volumes: Vec<Volume> = Vec::new();
    for (flag, spec, parsed) in specs {
        let ShareSpec { host, target, readonly } = parsed?;
        let host_dir = std::fs::canonicalize(&host)
            .with_context(|| format!("{flag} {spec}: the host directory {host} does not exist"))?;
        if !host_dir.is_dir() {
            bail!("{flag} {spec}: {host} is not a directory (kiln run shares directories only)");
        }
        if volumes.iter().any(|v| v.target == target) {
            bail!("{flag} {spec}: duplicate mount point {target}");
        }
        volumes.push(Volume { host_dir, target, readonly });
    }
    if !volumes.is_empty() {
        crate::vm::shares::daemon()?;
    }
    Ok(volumes)
}

pub fn run(args: RunArgs, cancel: &'static std::sync::atomic::AtomicBool) -> anyhow::Result<ExitCode> {
    #[cfg(not(unix))]
    if args.tty {
        bail!("-t (a pseudo-TTY) is not supported on this platform");
    }
    if args.tty && args.interactive && !terminal::stdin_is_terminal() {
        // docker's wording: -it needs a terminal to put into raw mode.
        bail!("the input device is not a TTY");
    }
    if args.detach {
        bail!("kiln run -d is not supported: kiln keeps no containers to stop or read logs from later; run `kiln run ... &` in the shell, or `nohup kiln run ... > log 2>&1 &`");
    }
    if args.rm == Some(false) {
        bail!("--rm=false is not supported: kiln keeps no containers, every run's VM and disk are discarded when it exits");
    }
    let ports = args.publish.iter().map(|p| parse_publish(p)).collect::<anyhow::Result<Vec<_>>>()?;
    let volumes = volumes(&args)?;
    let mut env = Vec::new();
    for file in &args.env_file {
        let text = std::fs::read(file).with_context(|| format!("--env-file {}", file.display()))?;
        env.extend(parse_env_file(&text, &file.display().to_string(), |k| std::env::var(k).ok())?);
    }
    env.extend(args.env.iter().filter_map(|e| with_host_value(e, |k| std::env::var(k).ok())));
    let req = RunRequest {
        image: args.image.clone(),
        platform: args.platform.clone(),
        ports,
        volumes,
        env,
        command: args.command.clone(),
        entrypoint: args.entrypoint.clone(),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        tty: args.tty.then(terminal::initial_size),
        memory_mib: args.memory,
        cpus: args.cpus.unwrap_or_else(|| crate::vm::VmConfig::new(Platform::host()).cpus),
    };
    let store = Store::open_default().context("opening the image store")?;
    pull_if_needed(&store, &args, cancel)?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut sink = |stream: u8, bytes: &[u8]| {
        let _ = if stream == kiln_protocol::stream::STDERR {
            err.write_all(bytes).and_then(|_| err.flush())
        } else {
            out.write_all(bytes).and_then(|_| out.flush())
        };
    };
    // `_raw` restores the terminal when dropped, on every way out of here.
    let (_raw, stdin) = terminal::guest_stdin(args.interactive, args.tty);
    let mut resizes = terminal::resizes(args.tty);
    let io = ExecIo { stdin, sink: &mut sink, resizes: &mut resizes };
    match run_image(&store, &req, io, cancel) {
        Ok(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Err(RunError::Session(SessionError::Vm(VmError::Agent { error: ClientError::RequestFailed(message), .. }))) => {
            match start_failure_code(&message) {
                Some(code) => {
                    eprintln!("error: {message}");
                    Ok(ExitCode::from(code))
                }
                None => Err(anyhow::anyhow!("{message}")),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// docker run's status for a command the guest could not start: 127 when
/// it does not exist, 126 when it cannot be executed. The agent reports
/// `cannot start "CMD": <io error>` with the guest's errno (the same numbers
/// on every Linux architecture).
fn start_failure_code(message: &str) -> Option<u8> {
    let errno = message.strip_prefix("cannot start ")?.rsplit_once("(os error ")?.1.split(')').next()?.parse::<i32>().ok()?;
    match errno {
        2 | 20 => Some(127),  // ENOENT, ENOTDIR
        _ => Some(126), // EACCES, ENOEXEC, ...: there but not runnable
    }
}

/// `KEY=VALUE` as it is; `KEY` alone with kiln's value, or nothing when
/// kiln has none (as docker run's -e and --env-file do).
fn with_host_value(entry: &str, host: impl Fn(&str) -> Option<String>) -> Option<String> {
    match entry.split_once('=') {
        Some(_) => Some(entry.to_string()),
        None => host(entry).map(|v| format!("{entry}={v}")),
    }
}

/// docker's env file: one `KEY=VALUE` per line, the value as written (no
/// quotes removed, trailing spaces kept); `KEY` alone takes `host`'s value;
/// blank lines and lines starting with `#` are skipped. A key with
/// whitespace, a line without a key, or bytes that are not UTF-8 are errors
/// naming `origin` and the line.
fn parse_env_file(bytes: &[u8], origin: &str, host: impl Fn(&str) -> Option<String>) -> anyhow::Result<Vec<String>> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let mut env = Vec::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = format!("--env-file {origin}:{}", index + 1);
        let line = std::str::from_utf8(raw).map_err(|_| anyhow::anyhow!("{at}: not UTF-8 text"))?;
        let line = line.strip_suffix('\r').unwrap_or(line).trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split_once('=').map_or(line, |(k, _)| k);
        if key.is_empty() {
            bail!("{at}: no variable name before '=' in {line:?}");
        }
        if key.chars().any(char::is_whitespace) {
            bail!("{at}: variable name {key:?} contains whitespace");
        }
        env.extend(with_host_value(line, &host));
    }
    Ok(env)
}

/// Pulls the image as `docker run --pull` does: by default only when the
/// store has no image of that name for the platform.
fn pull_if_needed(store: &Store, args: &RunArgs, cancel: &std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
    let platform = args.platform.clone().unwrap_or_else(Platform::host);
    let local = crate::registry::reference::resolve_local(store, &args.image).ok();
    let usable = local.as_ref().is_some_and(|(_, d)| {
        let image = store.image(d, Some(&platform));
        args.platform.is_none() || image.is_ok_and(|i| crate::oci::model::platform_matches(&platform, &i.platform()))
    });
    match args.pull.as_str() {
        "never" => return Ok(()),
        "missing" if usable => return Ok(()),
        "missing" => eprintln!("Unable to find image '{}' locally", args.image),
        _ => {}
    }
    let reference = crate::registry::Reference::parse(&args.image).with_context(|| format!("invalid image name {:?}", args.image))?;
    let client = args.registry.client()?;
    let opts = crate::registry::PullOptions { platform: Some(platform), all_platforms: false };
    let report = crate::cancel::block_on(&crate::cancel::runtime()?, cancel, client.pull(store, &reference, &opts))?
        .with_context(|| format!("pulling {reference}"))?;
    eprintln!("{}: pulled {} ({} blobs)", report.name, report.descriptor.digest(), report.blobs_downloaded);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_forms() {
        assert_eq!(parse_publish("8080:80").unwrap(), (8080, 80));
        assert_eq!(parse_publish("127.0.0.1:8080:80/tcp").unwrap(), (8080, 80));
        assert_eq!(parse_publish("5000").unwrap(), (5000, 5000));
        assert!(parse_publish("x:80").is_err());
    }

    #[test]
    fn env_files_read_like_dockers() {
        let host = |k: &str| (k == "HOME").then(|| "/home/me".to_string());
        let text = "\u{feff}# comment\n\nA=1\n  B=spaced \nC=\"quoted\"\r\nHOME\nUNSET\nD=x=y\n   # indented comment\nE=";
        let env = parse_env_file(text.as_bytes(), "app.env", host).unwrap();
        assert_eq!(env, ["A=1", "B=spaced ", "C=\"quoted\"", "HOME=/home/me", "D=x=y", "E="].map(String::from));
        let err = parse_env_file(b"A=1\nB =1\n", "app.env", host).unwrap_err().to_string();
        assert_eq!(err, "--env-file app.env:2: variable name \"B \" contains whitespace", "as docker refuses it");
        let err = parse_env_file(b"A=1\nbad line\n", "app.env", host).unwrap_err().to_string();
        assert_eq!(err, "--env-file app.env:2: variable name \"bad line\" contains whitespace");
        let err = parse_env_file(b"A=1\n\n=2\n", "app.env", host).unwrap_err().to_string();
        assert!(err.starts_with("--env-file app.env:3: no variable name"), "{err}");
        let err = parse_env_file(b"A=\xff\n", "app.env", host).unwrap_err().to_string();
        assert_eq!(err, "--env-file app.env:1: not UTF-8 text");
    }

    #[test]
    fn start_failures_map_to_docker_statuses() {
        assert_eq!(start_failure_code(r#"cannot start "nosuch": No such file or directory (os error 2)"#), Some(127));
        assert_eq!(start_failure_code(r#"cannot start "/etc": Permission denied (os error 13)"#), Some(126));
        assert_eq!(start_failure_code(r#"cannot start "/x.txt": Exec format error (os error 8)"#), Some(126));
        assert_eq!(start_failure_code("mounting the root: busy"), None);
    }

    fn share(host: &str, target: &str, readonly: bool) -> ShareSpec {
        ShareSpec { host: host.into(), target: target.into(), readonly }
    }

    #[test]
    fn volume_forms() {
        assert_eq!(parse_volume("/srv/data:/data").unwrap(), share("/srv/data", "/data", false));
        assert_eq!(parse_volume("./src:/work/:ro").unwrap(), share("./src", "/work", true));
        assert_eq!(parse_volume("../x:/x:rw").unwrap(), share("../x", "/x", false));
        assert_eq!(parse_volume(".:/x:ro,rw").unwrap(), share(".", "/x", false));
        let err = |spec: &str| parse_volume(spec).unwrap_err().to_string();
        assert!(err("cache:/cache").contains("named volumes are not supported"), "{}", err("cache:/cache"));
        assert!(err("/data").contains("anonymous volumes"), "{}", err("/data"));
        assert!(err("/srv:data").contains("must be absolute"), "{}", err("/srv:data"));
        assert!(err("/srv:/data:z").contains("unknown option \"z\""), "{}", err("/srv:/data:z"));
        assert!(err("/srv:/").contains("root"), "{}", err("/srv:/"));
        assert!(err("/a:/b:ro:x").contains("HOST:GUEST[:ro|rw]"), "{}", err("/a:/b:ro:x"));
    }

    #[test]
    fn mount_forms() {
        assert_eq!(parse_mount("type=bind,source=/srv,target=/data").unwrap(), share("/srv", "/data", false));
        assert_eq!(parse_mount("type=bind,src=rel,dst=/d,readonly").unwrap(), share("rel", "/d", true));
        assert_eq!(parse_mount("target=/d,type=bind,source=/s,ro=true").unwrap(), share("/s", "/d", true));
        assert_eq!(parse_mount("type=bind,source=/s,destination=/d,readonly=false").unwrap(), share("/s", "/d", false));
        let err = |spec: &str| parse_mount(spec).unwrap_err().to_string();
        assert!(err("source=/s,target=/d").contains("give type=bind"), "{}", err("source=/s,target=/d"));
        assert!(err("type=volume,source=v,target=/d").contains("type=volume is not supported"));
        assert!(err("type=bind,target=/d").contains("source="), "{}", err("type=bind,target=/d"));
        assert!(err("type=bind,source=/s").contains("target="), "{}", err("type=bind,source=/s"));
        assert!(err("type=bind,source=/s,target=d").contains("must be absolute"));
        assert!(err("type=bind,source=/s,target=/d,bind-propagation=shared").contains("unknown field"));
    }

    // Unix paths: `-v` is Linux-only, and a Windows drive letter holds a colon.
    #[cfg(unix)]
    #[test]
    fn host_directories_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let args = |volume: Vec<String>, mount: Vec<String>| {
            use clap::Parser;
            #[derive(Parser)]
            struct Cli {
                #[command(flatten)]
                run: RunArgs,
            }
            let mut argv = vec!["kiln".to_string()];
            argv.extend(volume.into_iter().flat_map(|v| ["-v".to_string(), v]));
            argv.extend(mount.into_iter().flat_map(|m| ["--mount".to_string(), m]));
            argv.push("img".into());
            Cli::parse_from(argv).run
        };
        let d = dir.path().display();
        let err = |volume: Vec<String>, mount: Vec<String>| volumes(&args(volume, mount)).unwrap_err().to_string();
        let missing = err(vec![format!("{d}/nope:/data")], vec![]);
        assert!(missing.contains("does not exist"), "{missing}");
        let not_dir = err(vec![format!("{}:/data", file.display())], vec![]);
        assert!(not_dir.contains("is not a directory"), "{not_dir}");
        let twice = err(vec![format!("{d}:/data")], vec![format!("type=bind,source={d},target=/data/")]);
        assert!(twice.contains("duplicate mount point /data"), "{twice}");
        // A good one passes the path checks (and then needs virtiofsd on this host).
        match volumes(&args(vec![format!("{d}/:/data:ro")], vec![])) {
            Ok(v) => assert_eq!(v, [Volume { host_dir: dir.path().canonicalize().unwrap(), target: "/data".into(), readonly: true }]),
            Err(e) => assert!(e.to_string().contains("virtiofsd"), "{e}"),
        }
    }
}
