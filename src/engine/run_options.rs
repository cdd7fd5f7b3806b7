//! Build-wide options of every RUN, as `docker buildx build` takes them:
//! `--add-host`, `--shm-size`, `--ulimit`. BuildKit keeps them in each
//! ExecOp (ExtraHosts, ShmSize, Ulimit), so they are part of a RUN's cache
//! key; none of them reaches a layer (the agent bind-mounts a private
//! /etc/hosts and /dev/shm and sets the limits on the command).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_protocol::{ExecRequest, HostEntry, Ulimit, ULIMIT_NAMES};

use crate::dockerfile::mount::parse_ram_size;
use crate::vm::qemu::HOST_GATEWAY;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// `--add-host`, in the order given (`host-gateway` already resolved).
    pub extra_hosts: Vec<HostEntry>,
    /// `--shm-size` in bytes; `None` is docker's 64 MiB.
    pub shm_size: Option<u64>,
    /// `--ulimit`, in the order given.
    pub ulimits: Vec<Ulimit>,
    /// `--ssh`: host ssh-agent sockets by id, for `RUN --mount=type=ssh`
    /// (forwarded for that step only; in no key and no layer).
    pub ssh_agents: BTreeMap<String, PathBuf>,
}

impl RunOptions {
    /// Parses the flags' values; errors name the flag and the value.
    pub fn from_flags(add_hosts: &[String], shm_size: Option<&str>, ulimits: &[String]) -> Result<Self, String> {
        Ok(RunOptions {
            extra_hosts: add_hosts.iter().map(|h| parse_add_host(h)).collect::<Result<_, _>>()?,
            shm_size: shm_size.map(parse_shm_size).transpose()?.flatten(),
            ulimits: ulimits.iter().map(|u| parse_ulimit(u)).collect::<Result<_, _>>()?,
            ssh_agents: BTreeMap::new(),
        })
    }

    /// `--ssh default|ID[=SOCKET]` (buildx's form; without a socket,
    /// $SSH_AUTH_SOCK). kiln forwards agent sockets, not key files.
    pub fn with_ssh(mut self, specs: &[String], auth_sock: Option<PathBuf>) -> Result<Self, String> {
        for spec in specs {
            let (id, path) = match spec.split_once('=') {
                Some((id, path)) => (id, PathBuf::from(path)),
                None => (spec.as_str(), auth_sock.clone().ok_or_else(|| format!("--ssh {spec}: SSH_AUTH_SOCK is not set (start ssh-agent, or give {spec}=SOCKET)"))?),
            };
            if id.is_empty() {
                return Err(format!("--ssh {spec:?}: the id is empty (expected default or ID[=SOCKET])"));
            }
            check_agent_socket(&path).map_err(|why| format!("--ssh {spec}: {}: {why}", path.display()))?;
            self.ssh_agents.insert(id.to_string(), path);
        }
        Ok(self)
    }

    /// Their part of a RUN's cache key; empty when none is set, so keys of
    /// builds without them stay what they were.
    pub fn key_part(&self) -> String {
        let mut key = String::new();
        for h in &self.extra_hosts {
            key.push_str(&format!("host {} {}\n", h.name, h.ip));
        }
        if let Some(size) = self.shm_size {
            key.push_str(&format!("shm {size}\n"));
        }
        for u in &self.ulimits {
            key.push_str(&format!("ulimit {} {} {}\n", u.name, u.soft, u.hard));
        }
        key
    }

    /// Sets them on a RUN's request.
    pub fn apply(&self, req: &mut ExecRequest) {
        req.extra_hosts = self.extra_hosts.clone();
        req.shm_size_bytes = self.shm_size;
        req.ulimits = self.ulimits.clone();
    }
}

/// An ssh agent's socket: a key file (which buildx also takes) is refused.
#[cfg(unix)]
fn check_agent_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err("not an agent socket (kiln forwards ssh-agent sockets; load keys with ssh-add)".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(not(unix))]
fn check_agent_socket(_: &Path) -> Result<(), String> {
    Err("forwarding an ssh agent needs unix sockets, which this host lacks".into())
}

/// `HOST:IP` or `HOST=IP` (docker 25+); IPv6 may be in brackets;
/// `host-gateway` is the host as the build VM reaches it.
fn parse_add_host(spec: &str) -> Result<HostEntry, String> {
    let bad = |why: &str| format!("--add-host {spec:?}: {why} (expected HOST:IP or HOST=IP)");
    // Split at the first separator: an IPv6 address holds colons.
    let (name, ip) = spec.split_once('=').or_else(|| spec.split_once(':')).ok_or_else(|| bad("no separator"))?;
    if name.is_empty() {
        return Err(bad("the host name is empty"));
    }
    if name.contains(|c: char| c.is_whitespace() || c == '#') {
        return Err(bad("the host name may not contain spaces or '#'"));
    }
    let ip = if ip == "host-gateway" {
        HOST_GATEWAY.to_string()
    } else {
        let bare = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
        let addr: std::net::IpAddr = bare.parse().map_err(|_| bad(&format!("{ip:?} is not an IP address or host-gateway")))?;
        addr.to_string()
    };
    Ok(HostEntry { name: name.to_string(), ip })
}

/// docker's size syntax (`64m`, `1g`, bytes); 0 means the default.
fn parse_shm_size(spec: &str) -> Result<Option<u64>, String> {
    let bytes = parse_ram_size(spec).ok_or_else(|| format!("--shm-size {spec:?}: expected a size such as 64m or 1g"))?;
    Ok((bytes > 0).then_some(bytes))
}

/// `NAME=SOFT[:HARD]` (docker's names; -1 or `unlimited` for no limit;
/// HARD defaults to SOFT).
fn parse_ulimit(spec: &str) -> Result<Ulimit, String> {
    let bad = |why: String| format!("--ulimit {spec:?}: {why}");
    let (name, limits) = spec.split_once('=').ok_or_else(|| bad("expected NAME=SOFT[:HARD]".into()))?;
    if !ULIMIT_NAMES.contains(&name) {
        return Err(bad(format!("unknown resource {name:?} (known: {})", ULIMIT_NAMES.join(", "))));
    }
    let value = |v: &str| match v {
        "-1" | "unlimited" => Ok(Ulimit::UNLIMITED),
        _ => v.parse::<u64>().ok().filter(|&n| n != Ulimit::UNLIMITED).ok_or_else(|| bad(format!("{v:?} is not a limit (a number, -1 or unlimited)"))),
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((soft, hard)) => (value(soft)?, value(hard)?),
        None => (value(limits)?, value(limits)?),
    };
    if soft > hard {
        return Err(bad("the soft limit is above the hard limit".into()));
    }
    Ok(Ulimit { name: name.to_string(), soft, hard })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, ip: &str) -> HostEntry {
        HostEntry { name: name.into(), ip: ip.into() }
    }

    #[test]
    fn add_host_takes_docker_forms() {
        assert_eq!(parse_add_host("db:10.1.2.3").unwrap(), host("db", "10.1.2.3"));
        assert_eq!(parse_add_host("db=10.1.2.3").unwrap(), host("db", "10.1.2.3"));
        assert_eq!(parse_add_host("v6:::1").unwrap(), host("v6", "::1"));
        assert_eq!(parse_add_host("v6=[fe80::1]").unwrap(), host("v6", "fe80::1"));
        assert_eq!(parse_add_host("gw:host-gateway").unwrap(), host("gw", "10.0.2.2"));
        for bad in ["db", ":1.2.3.4", "db:nope", "db:1.2.3.4.5", "a b:1.2.3.4", "db=1.2.3.4\n5.6.7.8 evil"] {
            let err = parse_add_host(bad).unwrap_err();
            assert!(err.starts_with("--add-host"), "{err}");
        }
    }

    #[test]
    fn shm_size_uses_dockers_units() {
        assert_eq!(parse_shm_size("64m").unwrap(), Some(64 << 20));
        assert_eq!(parse_shm_size("1g").unwrap(), Some(1 << 30));
        assert_eq!(parse_shm_size("1024").unwrap(), Some(1024));
        assert_eq!(parse_shm_size("0").unwrap(), None);
        assert!(parse_shm_size("lots").unwrap_err().contains("--shm-size \"lots\""));
    }

    #[test]
    fn ulimits_parse_like_docker() {
        let u = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!((u.name.as_str(), u.soft, u.hard), ("nofile", 1024, 2048));
        let u = parse_ulimit("nproc=77").unwrap();
        assert_eq!((u.soft, u.hard), (77, 77));
        let u = parse_ulimit("core=-1").unwrap();
        assert_eq!((u.soft, u.hard), (Ulimit::UNLIMITED, Ulimit::UNLIMITED));
        assert!(parse_ulimit("memlock=64:unlimited").is_ok());
        for (bad, why) in [
            ("nofile", "NAME=SOFT"),
            ("files=1", "unknown resource"),
            ("nofile=2:1", "soft limit is above"),
            ("nofile=x", "not a limit"),
            ("nofile=-5", "not a limit"),
        ] {
            let err = parse_ulimit(bad).unwrap_err();
            assert!(err.starts_with("--ulimit") && err.contains(why), "{bad}: {err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn ssh_takes_agent_sockets_only() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "key").unwrap();
        let with = |specs: &[&str], env: Option<&Path>| {
            let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
            RunOptions::default().with_ssh(&specs, env.map(Path::to_path_buf))
        };
        let opts = with(&["default", &format!("git={}", sock.display())], Some(&sock)).unwrap();
        assert_eq!(opts.ssh_agents.keys().collect::<Vec<_>>(), ["default", "git"]);
        assert!(opts.key_part().is_empty(), "the agent is in no key");
        assert!(with(&["default"], None).unwrap_err().contains("SSH_AUTH_SOCK is not set"));
        assert!(with(&[&format!("k={}", key.display())], None).unwrap_err().contains("not an agent socket"));
        assert!(with(&["x=/nonexistent/agent"], None).unwrap_err().starts_with("--ssh x="));
    }

    #[test]
    fn only_set_options_enter_the_key() {
        assert_eq!(RunOptions::default().key_part(), "");
        let a = RunOptions::from_flags(&["db:1.2.3.4".into()], None, &[]).unwrap();
        let b = RunOptions::from_flags(&["db:1.2.3.5".into()], None, &[]).unwrap();
        let c = RunOptions::from_flags(&[], Some("128m"), &["nofile=10".into()]).unwrap();
        assert_ne!(a.key_part(), b.key_part());
        assert!(c.key_part().contains("shm 134217728") && c.key_part().contains("ulimit nofile 10 10"));
    }
}
