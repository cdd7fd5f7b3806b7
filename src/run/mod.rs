//! `kiln run`: an image's entrypoint and command, with its env, user and
//! workdir, in a VM of the image's platform. The layers become overlay lowers
//! in the guest (nothing is unpacked on the host); `-p` forwards host TCP
//! ports on 127.0.0.1 through QEMU's user network; `-v` shares host
//! directories live over virtio-fs ([`crate::vm::shares`]).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::engine::image_config::{ImageConfigFile, DEFAULT_PATH_ENV};
use crate::engine::layer_images::LayerDisks;
use crate::engine::rootfs::{LayerStack, RootfsError};
use crate::engine::users::{self, UserError};
use crate::engine::vm_session::{ExecIo, LayerRef, RunSpec, Session, SessionError};
use crate::oci::store::{Store, StoreError};
use crate::platform::Platform;
use crate::vm::shares::{self, Share};
use crate::vm::{BootFilesError, VmConfig};
use kiln_protocol::{ExecRequest, MountSpec, TtySize};

#[derive(Debug, Clone)]
pub struct RunRequest {
    pub image: String,
    /// Which platform of a multi-platform image (default: the host's, else the only one).
    pub platform: Option<Platform>,
    /// `(host port, guest port)` TCP forwards on 127.0.0.1.
    pub ports: Vec<(u16, u16)>,
    /// Host directories mounted in the container (`-v`, `--mount type=bind`).
    pub volumes: Vec<Volume>,
    /// Extra `KEY=VALUE` entries over the image's ENV.
    pub env: Vec<String>,
    /// Replaces the image's CMD when not empty.
    pub command: Vec<String>,
    /// Replaces the image's ENTRYPOINT (`Some("")` clears it).
    pub entrypoint: Option<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// Give the command a terminal of this size (`-t`).
    pub tty: Option<TtySize>,
    pub memory_mib: u64,
    pub cpus: u32,
}

/// A host directory mounted live in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// An existing directory, absolute.
    pub host_dir: PathBuf,
    /// An absolute path in the container (created when missing).
    pub target: String,
    pub readonly: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    BootFiles(#[from] BootFilesError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error("{image}: {message}")]
    Image { image: String, message: String },
}

/// Runs the image and returns the command's exit code (128+signal when killed).
pub fn run_image(store: &Store, req: &RunRequest, io: ExecIo<'_>, cancel: &AtomicBool) -> Result<i32, RunError> {
    let bad = |message: String| RunError::Image { image: req.image.clone(), message };
    let (_, desc) = crate::registry::reference::resolve_local(store, &req.image)?;
    let image = match &req.platform {
        Some(p) => {
            let image = store.image(&desc, Some(p))?;
            if !crate::oci::model::platform_matches(p, &image.platform()) {
                return Err(bad(format!("the image is {}, not {p} (pull the {p} image, or run without --platform)", image.platform())));
            }
            image
        }
        None => store.image(&desc, None).or_else(|_| single_platform(store, &desc))?,
    };
    let config: ImageConfigFile =
        serde_json::from_slice(&image.config_bytes).map_err(|e| bad(format!("the image config is not valid: {e}")))?;
    let layers: Vec<LayerRef> = image
        .manifest
        .layers()
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(d, id)| LayerRef { descriptor: d.clone(), diff_id: id.clone() })
        .collect();

    let c = &config.config;
    let mut argv: Vec<String> = match &req.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => c.entrypoint.clone().unwrap_or_default(),
    };
    if !req.command.is_empty() {
        argv.extend(req.command.iter().cloned());
    } else if req.entrypoint.is_none() || req.entrypoint.as_deref() == Some("") {
        argv.extend(c.cmd.clone().unwrap_or_default());
    }
    if argv.is_empty() {
        return Err(bad("no command: the image has no ENTRYPOINT or CMD, give one".into()));
    }
    let mut env = c.env.clone();
    for e in &req.env {
        let key = e.split('=').next().unwrap_or(e);
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH_ENV.to_string());
    }
    // As docker does for -t: programs need to know what the terminal speaks.
    if req.tty.is_some() && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_string());
    }
    let user = req.user.clone().unwrap_or_else(|| c.user.clone());
    let identity = if user.is_empty() || user == "root" || user == "0" {
        users::Identity::default()
    } else {
        let descriptors: Vec<_> = layers.iter().map(|l| l.descriptor.clone()).collect();
        users::resolve_in(&LayerStack::open(store, &descriptors)?, store, &user)?
    };
    let cwd = req.workdir.clone().unwrap_or_else(|| c.working_dir.clone());

    let platform = image.platform();
    let mut vm_config = VmConfig::new(platform.clone());
    vm_config.memory_mib = req.memory_mib;
    vm_config.cpus = req.cpus;
    vm_config.netdev_extra = req.ports.iter().map(|(h, g)| format!("hostfwd=tcp:127.0.0.1:{h}-:{g}")).collect();
    vm_config.shares = req.volumes.iter().map(|v| Share { host_dir: v.host_dir.clone(), readonly: v.readonly }).collect();
    let mounts = req
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| MountSpec::Virtiofs { tag: shares::tag(i), target: v.target.clone(), readonly: v.readonly })
        .collect();
    let files = crate::vm::boot_files(&platform, None)?;
    let disks = LayerDisks::for_boot(store, &layers, None);
    let mut session = Session::boot(&vm_config, &files, disks, cancel)?;
    let request = ExecRequest {
        argv,
        env,
        cwd: if cwd.is_empty() { "/".into() } else { cwd },
        uid: identity.uid,
        gid: identity.gid,
        groups: identity.groups,
        tty: req.tty,
        mounts,
        ..Default::default()
    };
    let status = session.exec(store, RunSpec { request, layers: &layers, ssh_agents: Vec::new() }, io, cancel);
    session.shutdown();
    Ok(status?.shell_code())
}

/// An index with exactly one image: run that one whatever the host is.
fn single_platform(store: &Store, desc: &oci_spec::image::Descriptor) -> Result<crate::oci::Image, StoreError> {
    let (manifest, _) = store.read_manifest(desc)?;
    let children = manifest.children();
    match children.as_slice() {
        [only] => store.image(only, None),
        _ => store.image(desc, None),
    }
}
