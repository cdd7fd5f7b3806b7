//! `RUN --mount`: what each mount reads and adds to the step's cache key
//! (resolved before any VM exists, [`RunMounts::resolve`]) and what it
//! becomes inside the VM ([`RunMounts::into_specs`]).
//!
//! - `cache`: a volume per id and platform kept on the host as a tar in
//!   the image store's folder (beside the build cache), unpacked once per VM into a scratch directory, bound
//!   into the step, and written back after a successful step. Its contents
//!   never reach a layer or the cache key. `sharing` is a file lock beside
//!   the tar, held by the step from before the volume is loaded until it is
//!   saved, so it holds across kiln processes ([`lease_volume`]).
//! - `bind`: from another stage or an image (a read-only overlay of its
//!   layers), or from the build context (copied into the VM).
//! - `tmpfs`: a fresh tmpfs.
//! - `secret`: the value given with `--secret`, held in guest memory only;
//!   it is in no layer, no history entry, no cache key and no log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use kiln_protocol::{EntryKind, LayerEntry, MountSpec};
use sha2::{Digest as _, Sha256};

use super::copy::CopyPlan;
use super::layer_tar::{write_tar, LayerOptions, LayerTarError};
use super::vm_session::{CacheVolume, LayerRef, Session, SessionError};
use crate::dockerfile::mount::{Mount, MountType, Sharing};
use crate::oci::layer::Compression;
use crate::oci::store::Store;
use crate::platform::Platform;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A `--secret` problem, reported at the RUN's line.
    #[error("{0}")]
    Secret(String),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Layer(#[from] LayerTarError),
    #[error("staging a bind mount of the build context: {0}")]
    Staging(std::io::Error),
    /// An ssh mount without its `--ssh` agent, reported at the RUN's line.
    #[error("{0}")]
    Ssh(String),
    #[error("locking the cache mount {}: {source}", path.display())]
    Lock { path: PathBuf, source: std::io::Error },
}

/// A cache volume one step uses, with the lock its `sharing` asked for.
pub struct CacheUse {
    pub volume: CacheVolume,
    /// Its mount source on the scratch disk.
    source: String,
    /// Held until the step is done; `None` for a private mount's fresh
    /// instance, which is not saved.
    lease: Option<std::fs::File>,
}

impl CacheUse {
    /// Whether the step's changes are saved back to the volume.
    pub fn kept(&self) -> bool {
        self.lease.is_some()
    }
}

/// How often a waiting step retries a cache volume's lock (BuildKit polls as often).
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Takes the lock at `lock_path` as `sharing` asks: `shared` with other
/// shared users, `locked` alone (waiting for every other user), `private`
/// alone or not at all: `None` when another step holds the volume, and the
/// caller uses a fresh instance. Waiting ends with `Interrupted` on `cancel`;
/// `waiting` is called once when it begins.
pub fn lease_volume(lock_path: &Path, sharing: Sharing, cancel: &AtomicBool, waiting: &dyn Fn()) -> std::io::Result<Option<std::fs::File>> {
    use crate::oci::store::{lock, LockKind};
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(lock_path)?;
    let mut told = false;
    loop {
        let kind = match sharing {
            Sharing::Shared => LockKind::TryShared,
            Sharing::Locked | Sharing::Private => LockKind::TryExclusive,
        };
        match lock(&file, kind) {
            Ok(()) => return Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && sharing == Sharing::Private => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if cancel.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(std::io::ErrorKind::Interrupted.into());
                }
                if !std::mem::replace(&mut told, true) {
                    waiting();
                }
                std::thread::sleep(LOCK_POLL);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Where a mount's files come from.
pub enum MountSource {
    /// tmpfs, cache and secret mounts read nothing of the build.
    Nothing,
    /// `from=` a stage or an image: its layers, as a read-only overlay.
    Layers(Vec<LayerRef>),
    /// The build context's files under `source`, planned like COPY;
    /// `is_file` mounts a single file as that file.
    Context { plan: CopyPlan, is_file: bool },
}

/// A RUN's mounts, their sources, and what they add to the step's key.
pub struct RunMounts<'m> {
    mounts: Vec<(&'m Mount, MountSource)>,
    /// The mounts' part of the step's cache key.
    pub key: String,
}

/// What the mounts of one step need to become real in the VM.
pub struct MountTarget<'a> {
    pub store: &'a Store,
    pub platform: &'a Platform,
    /// The step's WORKDIR; relative targets join it.
    pub cwd: &'a str,
    pub secrets: &'a BTreeMap<String, Vec<u8>>,
    /// `--ssh` agent sockets by id.
    pub ssh_agents: &'a BTreeMap<String, PathBuf>,
    pub cancel: &'a AtomicBool,
    /// Shows a line in the step's output (waiting for a locked cache mount).
    pub note: &'a dyn Fn(&str),
}

/// What a step's mounts became in the VM.
pub struct MountsInVm {
    pub specs: Vec<MountSpec>,
    /// The cache volumes the step holds (those `kept` are saved back once it succeeded).
    pub caches: Vec<CacheUse>,
    /// The host ssh agents that `MountSpec::Ssh::agent` numbers.
    pub ssh_agents: Vec<PathBuf>,
    /// The first ssh mount's socket, for SSH_AUTH_SOCK.
    pub ssh_auth_sock: Option<String>,
}

impl<'m> RunMounts<'m> {
    /// Resolves each mount's source with `source_of`, which returns it and
    /// the text it adds to the key (a stage's key, the context's checksum).
    pub fn resolve<E>(
        mounts: &'m [Mount],
        cwd: &str,
        mut source_of: impl FnMut(&Mount) -> Result<(MountSource, String), E>,
    ) -> Result<Self, E> {
        let mut key = String::new();
        let mut resolved = Vec::with_capacity(mounts.len());
        for m in mounts {
            key.push_str(&key_part(m, cwd));
            key.push('\n');
            let (source, key_text) = source_of(m)?;
            key.push_str(&key_text);
            resolved.push((m, source));
        }
        Ok(RunMounts { mounts: resolved, key })
    }

    /// Makes the mounts real in `session`'s VM.
    pub fn into_specs(self, session: &mut Session, to: &MountTarget<'_>) -> Result<MountsInVm, MountError> {
        // Secrets first: a missing required one fails before anything is sent.
        let mut secrets = Vec::new();
        for (m, _) in self.mounts.iter().filter(|(m, _)| m.kind == MountType::Secret) {
            secrets.push(secret_for(m, to.secrets).map_err(MountError::Secret)?);
        }
        let mut secrets = secrets.into_iter();
        let (mut specs, mut volumes) = (Vec::new(), Vec::new());
        let (mut ssh_agents, mut ssh_auth_sock) = (Vec::new(), None);
        for (m, source) in self.mounts {
            let target = target_path(m, to.cwd, "");
            match (m.kind, source) {
                (MountType::Tmpfs, _) => specs.push(MountSpec::Tmpfs { target, size_bytes: m.size }),
                (MountType::Secret, _) => {
                    if let Some((_, spec)) = secrets.next().expect("one per secret mount") {
                        specs.push(spec);
                    }
                }
                (MountType::Cache, _) => {
                    let volume = CacheVolume::for_mount(m, to.cwd, to.platform, to.store.root());
                    // A volume mounted twice in one step is one use of it (a second lock would wait on the first).
                    let source = match volumes.iter().position(|u: &CacheUse| u.volume.name == volume.name) {
                        Some(i) => volumes[i].source.clone(),
                        None => {
                            let lock_path = volume.host_tar.with_extension("lock");
                            let waiting = || (to.note)(&format!("waiting for the cache mount {target}: another build uses it\n"));
                            let lease = lease_volume(&lock_path, m.sharing.unwrap_or(Sharing::Shared), to.cancel, &waiting).map_err(|source| {
                                if source.kind() == std::io::ErrorKind::Interrupted {
                                    MountError::Session(SessionError::Vm(crate::vm::VmError::Interrupted))
                                } else {
                                    MountError::Lock { path: lock_path.clone(), source }
                                }
                            })?;
                            let source = session.ensure_cache(&volume, lease.is_some(), to.cancel)?;
                            volumes.push(CacheUse { volume, source: source.clone(), lease });
                            source
                        }
                    };
                    specs.push(MountSpec::Bind { source, target, readonly: false });
                }
                (MountType::Ssh, _) => {
                    let id = m.ssh_id();
                    let Some(socket) = to.ssh_agents.get(&id) else {
                        if m.required {
                            return Err(MountError::Ssh(format!("ssh agent {id} is required but was not given (use --ssh {id}=SOCKET, or --ssh default)")));
                        }
                        continue;
                    };
                    // BuildKit's default target numbers the step's ssh mounts.
                    let target = target_path(m, to.cwd, &format!("/run/buildkit/ssh_agent.{}", ssh_agents.len()));
                    let agent = ssh_agents.len() as u32;
                    ssh_agents.push(socket.clone());
                    ssh_auth_sock.get_or_insert_with(|| target.clone());
                    specs.push(MountSpec::Ssh { target, agent, mode: m.mode.unwrap_or(0o600), uid: m.uid.unwrap_or(0), gid: m.gid.unwrap_or(0) });
                }
                (MountType::Bind, MountSource::Context { plan, is_file }) => {
                    let source = unpack_context(session, to, plan, is_file)?;
                    specs.push(MountSpec::Bind { source, target, readonly: m.readonly });
                }
                (MountType::Bind, MountSource::Layers(layers)) => {
                    let lowers = session.lowers_for(to.store, &layers, to.cancel)?;
                    let subpath = m.source.clone().unwrap_or_default().trim_start_matches('/').to_string();
                    specs.push(MountSpec::Overlay { lowers, subpath, target });
                }
                (kind, _) => unreachable!("{kind:?} mounts are resolved or refused before the VM"),
            }
        }
        Ok(MountsInVm { specs, caches: volumes, ssh_agents, ssh_auth_sock })
    }
}

/// Sends a planned context bind into the VM; returns its scratch path.
fn unpack_context(session: &mut Session, to: &MountTarget<'_>, plan: CopyPlan, is_file: bool) -> Result<String, MountError> {
    let (mut entries, mut contents) = (plan.entries, plan.contents);
    let single_file = match entries.as_slice() {
        [LayerEntry { path, kind: EntryKind::File { .. }, .. }] if is_file => Some(path.clone()),
        _ => None,
    };
    let mut tar = tempfile::tempfile_in(to.store.root().join("tmp")).map_err(MountError::Staging)?;
    let opts = LayerOptions { compression: Compression::None, source_date_epoch: None };
    write_tar(&mut entries, contents.as_mut(), &opts, &mut tar)?;
    std::io::Seek::rewind(&mut tar).map_err(MountError::Staging)?;
    let dir = session.unpack_fresh(&mut std::io::BufReader::new(tar), to.cancel)?;
    // A single file is mounted as that file, a directory as the directory.
    Ok(match single_file {
        Some(name) => format!("{dir}/{name}"),
        None => dir,
    })
}

/// Resolves a mount target: absolute, or relative to the WORKDIR.
pub fn target_path(m: &Mount, workdir: &str, default: &str) -> String {
    let t = m.target.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| default.to_string());
    if t.starts_with('/') {
        super::image_config::clean_abs(&t)
    } else {
        super::image_config::clean_abs(&format!("{workdir}/{t}"))
    }
}

/// The host file of cache volume `id` for `platform` (volumes are per
/// platform: compiled artefacts of one arch are useless to another). The
/// `-d` marks tars holding the volume under `vm_session::CACHE_ROOT`; earlier
/// volumes (files at the top) are not read.
pub fn cache_volume_path(cache_root: &Path, platform: &Platform, id: &str) -> PathBuf {
    let mut h = Sha256::new();
    h.update(platform.to_string().as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    cache_root.join("mount-cache").join(format!("{}-d.tar", hex::encode(&h.finalize()[..16])))
}

/// The secret mount's target and the value to put there, or None when an
/// optional secret was not given.
pub fn secret_for(m: &Mount, secrets: &BTreeMap<String, Vec<u8>>) -> Result<Option<(String, MountSpec)>, String> {
    let id = m.secret_id();
    let target = m.target.clone().unwrap_or_else(|| format!("/run/secrets/{id}"));
    match secrets.get(&id) {
        Some(data) => Ok(Some((
            id,
            MountSpec::Secret {
                target,
                data: data.clone(),
                mode: m.mode.unwrap_or(0o400),
                uid: m.uid.unwrap_or(0),
                gid: m.gid.unwrap_or(0),
            },
        ))),
        None if m.required => Err(format!("secret {id} is required but was not given (use --secret id={id},src=FILE)")),
        None => Ok(None),
    }
}

/// The cache key part of a mount: its kind and placement, never contents
/// (except a bind's source, which the caller adds as a checksum).
pub fn key_part(m: &Mount, workdir: &str) -> String {
    let kind = format!("{:?}", m.kind).to_lowercase();
    match m.kind {
        MountType::Secret => format!("secret id={:?} target={:?}", m.id, m.target),
        // As BuildKit's SSHOpt: which agent, where, and how the socket is owned; never the agent's keys.
        MountType::Ssh => format!(
            "ssh id={:?} target={:?} required={} mode={:?} uid={:?} gid={:?}",
            m.id, m.target, m.required, m.mode, m.uid, m.gid
        ),
        MountType::Cache => {
            // As in BuildKit's LLB: sharing and the new directory's owner and
            // mode are part of the mount; added only when given, so earlier keys hold.
            let mut key = format!("cache id={:?} target={}", m.id, target_path(m, workdir, ""));
            for (name, value) in [("sharing", m.sharing.map(|s| format!("{s:?}"))), ("mode", m.mode.map(|v| format!("{v:o}"))), ("uid", m.uid.map(|v| v.to_string())), ("gid", m.gid.map(|v| v.to_string()))] {
                if let Some(value) = value {
                    key.push_str(&format!(" {name}={value}"));
                }
            }
            key
        }
        _ => format!(
            "{kind} target={} from={:?} source={:?} readonly={}",
            target_path(m, workdir, ""),
            m.from,
            m.source,
            m.readonly
        ),
    }
}

impl CacheVolume {
    /// The volume a `type=cache` mount names (by id, else by target).
    pub fn for_mount(m: &Mount, workdir: &str, platform: &Platform, cache_root: &Path) -> Self {
        let id = m.id.clone().unwrap_or_else(|| target_path(m, workdir, ""));
        let host_tar = cache_volume_path(cache_root, platform, &id);
        let name = host_tar.file_stem().and_then(|n| n.to_str()).expect("volume names are hex").to_string();
        // BuildKit's defaults for a new cache directory.
        CacheVolume { host_tar, name, mode: m.mode.unwrap_or(0o755), uid: m.uid.unwrap_or(0), gid: m.gid.unwrap_or(0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::mount::parse;

    #[test]
    fn targets_join_the_workdir() {
        let m = parse("type=cache,target=.cache", None).unwrap();
        assert_eq!(target_path(&m, "/src", ""), "/src/.cache");
        let m = parse("type=tmpfs,target=/tmp/x/", None).unwrap();
        assert_eq!(target_path(&m, "/src", ""), "/tmp/x");
    }

    #[test]
    fn secrets_default_their_target_and_stay_out_of_keys() {
        let mut secrets = BTreeMap::new();
        secrets.insert("tok".to_string(), b"hunter2".to_vec());
        let m = parse("type=secret,id=tok", None).unwrap();
        let (id, spec) = secret_for(&m, &secrets).unwrap().unwrap();
        assert_eq!(id, "tok");
        assert!(matches!(spec, MountSpec::Secret { ref target, mode: 0o400, .. } if target == "/run/secrets/tok"));
        assert!(!key_part(&m, "/").contains("hunter2"));
        let missing = parse("type=secret,id=nope", None).unwrap();
        assert!(secret_for(&missing, &secrets).unwrap().is_none());
        let required = parse("type=secret,id=nope,required", None).unwrap();
        assert!(secret_for(&required, &secrets).unwrap_err().contains("nope"));
    }

    #[test]
    fn sharing_modes_lock_the_volume_like_buildkit() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("mount-cache/v.lock");
        let never = AtomicBool::new(false);
        let lease = |sharing, cancel: &AtomicBool| lease_volume(&lock, sharing, cancel, &|| {}).unwrap();
        let shared_a = lease(Sharing::Shared, &never).expect("shared");
        let shared_b = lease(Sharing::Shared, &never).expect("shared users run together");
        assert!(lease(Sharing::Private, &never).is_none(), "private gets a fresh instance while others use the volume");
        // `locked` waits for every other user, and stops waiting when cancelled.
        let cancel = AtomicBool::new(true);
        let told = std::cell::Cell::new(0);
        let err = lease_volume(&lock, Sharing::Locked, &cancel, &|| told.set(told.get() + 1)).unwrap_err();
        assert_eq!((err.kind(), told.get()), (std::io::ErrorKind::Interrupted, 0));
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                let told = std::cell::Cell::new(0);
                let held = lease_volume(&lock, Sharing::Locked, &AtomicBool::new(false), &|| told.set(told.get() + 1)).unwrap();
                assert_eq!(told.get(), 1, "a wait is announced once");
                tx.send(()).unwrap();
                held
            })
        };
        assert!(rx.recv_timeout(std::time::Duration::from_millis(400)).is_err(), "locked waits for the shared users");
        drop(shared_a);
        assert!(rx.recv_timeout(std::time::Duration::from_millis(400)).is_err(), "and for the last of them");
        drop(shared_b);
        rx.recv_timeout(std::time::Duration::from_secs(5)).expect("locked runs once they are gone");
        let locked = waiter.join().unwrap();
        assert!(lease(Sharing::Private, &never).is_none());
        drop(locked);
        let private = lease(Sharing::Private, &never).expect("a free volume is private's own");
        assert!(lease(Sharing::Private, &never).is_none());
        drop(private);
    }

    #[test]
    fn cache_volumes_are_per_platform_and_id() {
        let root = std::path::Path::new("/c");
        let arm: Platform = "linux/arm64".parse().unwrap();
        let amd: Platform = "linux/amd64".parse().unwrap();
        assert_ne!(cache_volume_path(root, &arm, "apt"), cache_volume_path(root, &amd, "apt"));
        assert_ne!(cache_volume_path(root, &arm, "apt"), cache_volume_path(root, &arm, "cargo"));
        assert_eq!(cache_volume_path(root, &arm, "apt"), cache_volume_path(root, &arm, "apt"));
    }
}
