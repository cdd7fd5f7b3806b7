//! Host directories shared live with the guest over virtio-fs (`kiln run -v`).
//!
//! Each directory gets its own `virtiofsd`, run as the user running kiln
//! without a sandbox (no privileges needed, and files the guest creates
//! belong to that user), listening in the VM's private run directory; QEMU
//! connects to it as a vhost-user-fs device whose tag the guest mounts.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::arch::VirtioBus;
use super::transport::{wait_for_socket, SocketWait};

/// A host directory the guest mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub host_dir: PathBuf,
    pub readonly: bool,
}

/// The virtio-fs tag of the `index`th share, which the guest mounts.
pub fn tag(index: usize) -> String {
    format!("kilnvol{index}")
}

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("sharing a host directory (-v, --mount) needs virtiofsd, which is not installed: `cargo install virtiofsd --locked` (after apt-get install libseccomp-dev libcap-ng-dev) or scripts/setup-host.sh provides it")]
    NoDaemon,
    #[error("sharing a host directory (-v, --mount) is not supported on this host: it needs virtiofsd, which runs only on Linux")]
    NotOnThisHost,
    #[error("starting virtiofsd for {dir}: {source}")]
    Spawn { dir: String, source: io::Error },
    #[error("virtiofsd for {dir} exited at start ({status}): {log}")]
    Exited { dir: String, status: String, log: String },
    #[error("virtiofsd for {dir} did not create its socket within 10 s")]
    Timeout { dir: String },
}

/// The virtiofsd to run: on `PATH` (where cargo installs it), else where
/// Debian's package puts it.
#[cfg(target_os = "linux")]
pub fn daemon() -> Result<PathBuf, ShareError> {
    const DAEMON: &str = "virtiofsd";
    super::transport::find_in_path(DAEMON)
        .or_else(|| Some(Path::new("/usr/libexec").join(DAEMON)).filter(|p| p.is_file()))
        .ok_or(ShareError::NoDaemon)
}

#[cfg(not(target_os = "linux"))]
pub fn daemon() -> Result<PathBuf, ShareError> {
    Err(ShareError::NotOnThisHost)
}

/// The running daemons of a VM's shares and QEMU's arguments for their
/// devices. The daemons are killed on drop (and die with kiln).
#[derive(Default)]
pub struct ShareDaemons {
    children: Vec<Child>,
    pub qemu_args: Vec<String>,
}

impl ShareDaemons {
    /// Starts one daemon per share, its socket and log in `run_dir` (the
    /// VM's private directory), and waits until each listens.
    pub fn start(shares: &[Share], run_dir: &Path, bus: VirtioBus) -> Result<ShareDaemons, ShareError> {
        let mut daemons = ShareDaemons::default();
        if shares.is_empty() {
            return Ok(daemons);
        }
        let binary = daemon()?;
        for (index, share) in shares.iter().enumerate() {
            let dir = share.host_dir.display().to_string();
            let socket = run_dir.join(format!("fs{index}.sock"));
            let log_path = run_dir.join(format!("virtiofsd{index}.log"));
            let log = std::fs::File::create(&log_path).map_err(|source| ShareError::Spawn { dir: dir.clone(), source })?;
            let mut cmd = Command::new(&binary);
            cmd.args(daemon_args(share, &socket)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
            super::process::die_with_parent(&mut cmd);
            let child = cmd.spawn().map_err(|source| ShareError::Spawn { dir: dir.clone(), source })?;
            daemons.children.push(child);
            let child = daemons.children.last_mut().expect("just pushed");
            wait_for_socket(&socket, child).map_err(|e| match e {
                SocketWait::Exited(status) => {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default().trim().to_string();
                    ShareError::Exited { dir: dir.clone(), status: status.to_string(), log }
                }
                SocketWait::Timeout => ShareError::Timeout { dir: dir.clone() },
            })?;
            daemons.qemu_args.extend(device_args(index, &socket, bus));
        }
        Ok(daemons)
    }
}

impl Drop for ShareDaemons {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// virtiofsd's command line: no sandbox (it needs root), and read-only
/// enforced on the host as well as by the guest's mount.
fn daemon_args(share: &Share, socket: &Path) -> Vec<String> {
    let mut args = vec![
        format!("--socket-path={}", socket.display()),
        format!("--shared-dir={}", share.host_dir.display()),
        "--sandbox=none".into(),
        // The host's edits show in the guest within a second; unlike
        // `never`, shared mmap (databases, some build tools) works.
        "--cache=auto".into(),
        "--log-level=error".into(),
    ];
    if share.readonly {
        args.push("--readonly".into());
    }
    args
}

/// QEMU's vhost-user-fs device for the `index`th share.
fn device_args(index: usize, socket: &Path, bus: VirtioBus) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=fs{index},path={}", socket.display()),
        "-device".into(),
        format!("{},chardev=fs{index},tag={}", bus.device("vhost-user-fs"), tag(index)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_share_is_a_tagged_vhost_user_fs_device() {
        let args = device_args(1, Path::new("/run/fs1.sock"), VirtioBus::Pci).join(" ");
        assert_eq!(args, "-chardev socket,id=fs1,path=/run/fs1.sock -device vhost-user-fs-pci,chardev=fs1,tag=kilnvol1");
        assert!(device_args(0, Path::new("/s"), VirtioBus::Ccw)[3].starts_with("vhost-user-fs-ccw,"));
        let share = Share { host_dir: "/srv/data".into(), readonly: true };
        let args = daemon_args(&share, Path::new("/run/fs0.sock"));
        assert!(args.contains(&"--shared-dir=/srv/data".to_string()) && args.contains(&"--readonly".to_string()), "{args:?}");
        assert!(args.contains(&"--sandbox=none".to_string()), "{args:?}");
        assert!(!daemon_args(&Share { readonly: false, ..share }, Path::new("/s")).contains(&"--readonly".to_string()));
    }

    #[test]
    fn no_shares_start_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let daemons = ShareDaemons::start(&[], dir.path(), VirtioBus::Pci).unwrap();
        assert!(daemons.qemu_args.is_empty() && daemons.children.is_empty());
    }
}
