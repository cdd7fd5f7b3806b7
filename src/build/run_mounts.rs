//! `RUN --mount`: what each mount adds to the step's cache key (decided
//! before any VM exists) and what it becomes inside the VM.
//!
//! - `cache`: a volume per id and platform kept on the host as a tar in
//!   the image store's folder (beside the build cache), unpacked once per VM into a scratch directory, bound
//!   into the step, and written back after a successful step. Its contents
//!   never reach a layer or the cache key.
//! - `bind`: from another stage or an image (a read-only overlay of its
//!   layers), or from the build context (copied into the VM).
//! - `tmpfs`: a fresh tmpfs.
//! - `secret`: the value given with `--secret`, held in guest memory only;
//!   it is in no layer, no history entry, no cache key and no log.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_protocol::MountSpec;
use sha2::{Digest as _, Sha256};

use crate::dockerfile::mount::{Mount, MountType};
use crate::platform::Platform;

/// A cache volume used by a step.
#[derive(Debug, Clone)]
pub struct CacheVolume {
    /// Where it lives on the host between builds.
    pub host_tar: PathBuf,
    /// Its directory on the VM's scratch disk: one per volume, so steps of
    /// one VM share it and it is unpacked once.
    pub scratch_dir: String,
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
/// platform: compiled artefacts of one arch are useless to another).
pub fn cache_volume_path(cache_root: &std::path::Path, platform: &Platform, id: &str) -> PathBuf {
    let mut h = Sha256::new();
    h.update(platform.to_string().as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    cache_root.join("mount-cache").join(format!("{}.tar", hex::encode(&h.finalize()[..16])))
}

/// The secret mount's target and the value to put there, or None when an
/// optional secret was not given.
pub fn secret_for(m: &Mount, secrets: &BTreeMap<String, Vec<u8>>) -> Result<Option<(String, MountSpec)>, String> {
    let id = m
        .id
        .clone()
        .or_else(|| m.target.as_ref().and_then(|t| t.rsplit('/').next().map(str::to_string)))
        .unwrap_or_default();
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
        MountType::Cache => format!("cache id={:?} target={}", m.id, target_path(m, workdir, "")),
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
    pub fn for_mount(m: &Mount, workdir: &str, platform: &Platform, cache_root: &std::path::Path) -> Self {
        let id = m.id.clone().unwrap_or_else(|| target_path(m, workdir, ""));
        let host_tar = cache_volume_path(cache_root, platform, &id);
        let name = host_tar.file_stem().and_then(|n| n.to_str()).expect("volume names are hex");
        CacheVolume { scratch_dir: format!("c/{name}"), host_tar }
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
    fn cache_volumes_are_per_platform_and_id() {
        let root = std::path::Path::new("/c");
        let arm: Platform = "linux/arm64".parse().unwrap();
        let amd: Platform = "linux/amd64".parse().unwrap();
        assert_ne!(cache_volume_path(root, &arm, "apt"), cache_volume_path(root, &amd, "apt"));
        assert_ne!(cache_volume_path(root, &arm, "apt"), cache_volume_path(root, &arm, "cargo"));
        assert_eq!(cache_volume_path(root, &arm, "apt"), cache_volume_path(root, &arm, "apt"));
    }
}
