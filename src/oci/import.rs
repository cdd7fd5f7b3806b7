//! `kiln import`: a root file system tar (plain, gzip, zstd or xz) becomes
//! a one-layer image, like `docker import`.
//!
//! The tar is never unpacked on the host: its bytes stream through the tar
//! reader (which checks that it is a well-formed archive whose paths stay
//! inside the root) straight into a gzip [`LayerWriter`], so the layer's
//! diff_id is the sha256 of the tar exactly as given. Blobs are staged in an
//! [`crate::oci::Ingest`] and only enter the store when everything succeeded.
//!
//! `--change` lines are Dockerfile instructions, parsed and expanded by
//! [`crate::dockerfile`] (the same code a build uses), then applied to the
//! image config.

use std::io::{self, BufRead, BufReader, Read, Write};

use oci_spec::image::{Descriptor, MediaType};
use serde_json::json;

use crate::dockerfile::expand::{BuildOptions, Evaluator};
use crate::engine::image_config::{rfc3339, History, ImageConfigFile, RootFs, RunConfig};
use crate::dockerfile;
use crate::oci::layer::{Compression, LayerWriter};
use crate::oci::media;
use crate::oci::store::{Store, StoreError};
use crate::platform::Platform;
use kiln_protocol::tar_read::{Kind, TarReader};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{source_name}: {source}")]
    Read { source_name: String, source: io::Error },
    #[error("{source_name}: not a tar archive: {reason}")]
    NotATar { source_name: String, reason: String },
    #[error("{source_name}: {format}-compressed input is not supported; decompress it first (plain tar, gzip, zstd and xz are)")]
    UnsupportedCompression { source_name: String, format: &'static str },
    #[error("{source_name}: tar entry path or hard link target {entry:?} has a '..' component and would escape the root file system")]
    UnsafePath { source_name: String, entry: String },
    #[error("{0}")]
    Change(dockerfile::Error),
    #[error("--change {change:?}: {reason}")]
    BadChange { change: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T, E = ImportError> = std::result::Result<T, E>;

/// What the new image says about itself besides its file system.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub platform: Platform,
    /// Dockerfile instructions applied to the config, in order (`--change`).
    pub changes: Vec<String>,
    /// The history entry's comment (`--message`).
    pub message: Option<String>,
    /// Creation time, seconds since the epoch (SOURCE_DATE_EPOCH or now).
    pub created: i64,
}

/// Instructions `--change` accepts: the ones that only change the config.
const CHANGE_KEYWORDS: &str = "CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR";
const CHANGE_KINDS: [&str; 9] = ["CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"];

/// Reads a root file system tar from `input` (named `source_name` in errors)
/// and stores it as a one-layer image; returns the manifest's descriptor.
/// Tag it with [`Store::tag`]. On any error the store is left unchanged.
pub fn import_tar(store: &Store, input: impl Read, source_name: &str, opts: &ImportOptions) -> Result<Descriptor> {
    // Bad --change lines fail before any input is read.
    let container_config = container_config(&opts.changes, &opts.platform)?;
    let ingest = store.begin_ingest()?;
    let mut layer = LayerWriter::new(ingest.blob_writer()?, Compression::Gzip)?;
    copy_checked_tar(input, source_name, &mut layer)?;
    let layer = layer.finish()?;

    let created = rfc3339(opts.created);
    let config = ImageConfigFile {
        created: Some(created.clone()),
        architecture: opts.platform.architecture.clone(),
        os: opts.platform.os.clone(),
        variant: opts.platform.variant.clone(),
        config: container_config,
        rootfs: RootFs { kind: "layers".into(), diff_ids: vec![layer.diff_id.to_string()] },
        history: vec![History {
            created: Some(created),
            created_by: "import".into(),
            comment: opts.message.clone().unwrap_or_default(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let config = serde_json::to_vec(&config).expect("configs serialise");
    let config = ingest.put_bytes(&config, MediaType::Other(media::OCI_CONFIG.into()), None)?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config,
        "layers": [layer.descriptor],
    });
    let manifest = serde_json::to_vec(&manifest).expect("JSON values serialise");
    let manifest = ingest.put_bytes(&manifest, MediaType::Other(media::OCI_MANIFEST.into()), None)?;
    ingest.commit()?;
    Ok(manifest)
}

/// Decompresses `input` if needed and copies the tar's bytes unchanged into
/// `out`, failing if they are not a tar or a path has a `..` component.
fn copy_checked_tar(input: impl Read, source_name: &str, out: &mut impl Write) -> Result<()> {
    let read_err = |source| ImportError::Read { source_name: source_name.to_string(), source };
    let mut input = BufReader::with_capacity(1 << 20, input);
    let magic = input.fill_buf().map_err(read_err)?.to_vec();
    let tar: Box<dyn Read> = match magic.as_slice() {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(input)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(read_err)?),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Box::new(xz2::read::XzDecoder::new_multi_decoder(input)),
        [b'B', b'Z', b'h', ..] => {
            return Err(ImportError::UnsupportedCompression { source_name: source_name.to_string(), format: "bzip2" })
        }
        [] => return Err(ImportError::NotATar { source_name: source_name.to_string(), reason: "the input is empty".into() }),
        _ => Box::new(input),
    };
    let not_tar = |e: io::Error| ImportError::NotATar { source_name: source_name.to_string(), reason: e.to_string() };
    // kiln's one tar reader (PAX records are length-prefixed, so a binary
    // xattr value cannot hide the path record after it).
    let mut archive = TarReader::new(Tee { inner: tar, out });
    let mut entries = 0usize;
    // A read error of the underlying input is reported as such, not as "not a tar".
    while let Some(member) = archive.next_member().map_err(|e| if is_format_error(&e) { not_tar(e) } else { read_err(e) })? {
        // Hard link targets are paths in the archive too; symlink targets are
        // resolved inside the root by whoever unpacks, so they may say anything.
        let link = (member.kind == Kind::HardLink).then_some(&member.link);
        for path in std::iter::once(&member.path).chain(link) {
            if path.split(|&b| b == b'/').any(|c| c == b"..") {
                let entry = String::from_utf8_lossy(path).into_owned();
                return Err(ImportError::UnsafePath { source_name: source_name.to_string(), entry });
            }
        }
        entries += 1;
    }
    if entries == 0 {
        return Err(ImportError::NotATar { source_name: source_name.to_string(), reason: "the archive has no entries".into() });
    }
    // The end-of-archive blocks and record padding belong to the layer too;
    // what lies beyond MAX_TRAILER (a decompression bomb) is left unread.
    archive.finish().map_err(read_err)?;
    Ok(())
}

/// The tar reader reports malformed archives as these kinds; everything else
/// comes from reading or decompressing the input.
fn is_format_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::Other | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof)
}

/// Copies everything read from `inner` to `out`.
struct Tee<'w, R, W> {
    inner: R,
    out: &'w mut W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// The image config's `config` object after applying `changes` in order,
/// with the build's own rules ([`RunConfig::apply`]).
fn container_config(changes: &[String], platform: &Platform) -> Result<RunConfig> {
    let mut cfg = RunConfig::default();
    for (i, change) in changes.iter().enumerate() {
        let bad = |reason: String| ImportError::BadChange { change: change.clone(), reason };
        if change.contains(['\n', '\r']) {
            return Err(bad("a change is one instruction on one line".into()));
        }
        // Parsed as the only instruction of a stage, so errors point into the change itself.
        let df = dockerfile::parse_str(&format!("FROM scratch\n{change}\n")).map_err(|mut e| {
            e.pos.line = e.pos.line.saturating_sub(1);
            ImportError::Change(e.in_file(format!("--change #{}", i + 1)))
        })?;
        let [instruction] = df.stages[0].instructions.as_slice() else {
            return Err(bad("expected exactly one instruction".into()));
        };
        if !CHANGE_KINDS.contains(&instruction.kind.keyword()) {
            return Err(bad(format!(
                "{} cannot be used in a change; use one of {CHANGE_KEYWORDS}",
                instruction.kind.keyword()
            )));
        }
        let opts = BuildOptions::new(platform.clone());
        let eval = Evaluator::new(&df, &opts).map_err(ImportError::Change)?;
        let mut scope = eval.scope(&cfg.env_pairs());
        let expanded = scope.expand(instruction).map_err(|mut e| {
            e.pos.line = e.pos.line.saturating_sub(1);
            ImportError::Change(e.in_file(format!("--change #{}", i + 1)))
        })?;
        cfg.apply(&expanded.kind).map_err(bad)?;
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Written raw: the tar crate refuses to write `..` paths, which one test needs.
            h.as_mut_bytes()[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn hardlink_tar(path: &str, target: &str) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        h.set_path(path).unwrap();
        h.as_mut_bytes()[157..157 + target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &[][..]).unwrap();
        b.into_inner().unwrap()
    }

    /// A PAX header whose xattr value holds a newline, then a path record
    /// with `..`: a reader that splits records at newlines misses the path.
    fn pax_hidden_path_tar() -> Vec<u8> {
        let records = b"21 SCHILY.xattr.a=\n\n\n18 path=../escape\n".to_vec();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(records.len() as u64);
        b.append_data(&mut h, "PaxHeaders/x", &records[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "harmless", &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn opts(changes: &[&str]) -> ImportOptions {
        ImportOptions {
            platform: "linux/arm64".parse().unwrap(),
            changes: changes.iter().map(|s| s.to_string()).collect(),
            message: Some("hello".into()),
            created: 1_700_000_000,
        }
    }

        #[test]
    fn compressed_inputs_give_the_diff_id_of_the_plain_tar() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = tar_of(&[("etc/os-release", b"ID=test\n"), ("bin/sh", b"\x7fELF")]);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let xz = {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        };
        let want = crate::oci::digest::of_bytes(&tar).to_string();
        let mut manifests = Vec::new();
        for input in [&tar, &gz, &zst, &xz] {
            let d = import_tar(&store, &input[..], "t.tar", &opts(&[])).unwrap();
            let img = store.image(&d, None).unwrap();
            assert_eq!(img.diff_ids(), std::slice::from_ref(&want));
            assert_eq!(img.manifest.layers()[0].media_type().as_ref(), media::OCI_LAYER_GZIP);
            manifests.push(d.digest().clone());
        }
        manifests.dedup();
        assert_eq!(manifests.len(), 1, "same tar and options give the same image");
    }

    #[test]
    fn a_decompression_bomb_after_the_archive_end_is_left_unread() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = tar_of(&[("etc/os-release", b"ID=test\n")]);
        let gzip = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        // 4 GiB of zeros in 256 concatenated gzip members of 16 MiB: about 4 MB.
        let zeros = gzip(&vec![0u8; 16 << 20]);
        let mut bomb = gzip(&tar);
        for _ in 0..256 {
            bomb.extend_from_slice(&zeros);
        }
        let d = import_tar(&store, &bomb[..], "bomb.tgz", &opts(&[])).unwrap();
        let img = store.image(&d, None).unwrap();
        // The layer is the archive up to its first end block, and MAX_TRAILER
        // bytes after that.
        let mut want = tar[..tar.len() - 512].to_vec();
        want.resize(want.len() + kiln_protocol::tar_read::MAX_TRAILER as usize, 0);
        assert_eq!(img.diff_ids(), [crate::oci::digest::of_bytes(&want).to_string()]);
    }

    #[test]
    fn changes_set_the_config_with_build_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = tar_of(&[("a", b"a")]);
        let changes = [
            r#"CMD ["/bin/bash"]"#,
            "ENV PATH=/usr/sbin:/usr/bin A=1",
            "ENV PATH=/opt/bin:$PATH",
            "WORKDIR /srv",
            "WORKDIR app",
            "ENTRYPOINT exec tini",
            "LABEL org.example.v=$A",
            "USER nobody:nogroup",
            "EXPOSE 80 53/udp",
            "STOPSIGNAL SIGQUIT",
            "VOLUME /data",
        ];
        let d = import_tar(&store, &tar[..], "t.tar", &opts(&changes)).unwrap();
        let img = store.image(&d, None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&img.config_bytes).unwrap();
        let c = &v["config"];
        assert_eq!(c["Cmd"], json!(["/bin/bash"]));
        assert_eq!(c["Env"], json!(["PATH=/opt/bin:/usr/sbin:/usr/bin", "A=1"]));
        assert_eq!(c["WorkingDir"], json!("/srv/app"));
        assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c", "exec tini"]));
        assert_eq!(c["Labels"], json!({"org.example.v": "1"}));
        assert_eq!(c["User"], json!("nobody:nogroup"));
        assert_eq!(c["ExposedPorts"], json!({"53/udp": {}, "80/tcp": {}}));
        assert_eq!(c["StopSignal"], json!("SIGQUIT"));
        assert_eq!(c["Volumes"], json!({"/data": {}}));
        assert_eq!(v["architecture"], json!("arm64"));
        assert_eq!(v["os"], json!("linux"));
        assert_eq!(v["created"], json!("2023-11-14T22:13:20Z"));
        assert_eq!(v["history"], json!([{"created": "2023-11-14T22:13:20Z", "created_by": "import", "comment": "hello"}]));
    }

    #[test]
    fn bad_changes_and_bad_tars_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = tar_of(&[("a", b"a")]);
        let cases: Vec<(Vec<u8>, Vec<&str>, &str)> = vec![
            (tar.clone(), vec!["RUN echo hi"], "RUN cannot be used in a change"),
            (tar.clone(), vec!["CMD x", "FROM debian"], "expected exactly one instruction"),
            (tar.clone(), vec!["EXPOSE 99999"], "invalid port"),
            (tar.clone(), vec!["ENV"], "--change #1:1"),
            (tar.clone(), vec!["CMD a\nRUN b"], "one line"),
            (b"this is not a tar archive, just some text that is long enough to fill a header block. ".repeat(8), vec![], "not a tar archive"),
            (Vec::new(), vec![], "the input is empty"),
            (b"BZh91AY&SY".to_vec(), vec![], "bzip2"),
            (tar_of(&[("../escape", b"x")]), vec![], "'..'"),
            (hardlink_tar("etc/passwd-link", "../../etc/passwd"), vec![], "'..'"),
            (pax_hidden_path_tar(), vec![], "'..'"),
            (tar[..700].to_vec(), vec![], "t.tar"),
        ];
        for (input, changes, want) in cases {
            let err = import_tar(&store, &input[..], "t.tar", &opts(&changes)).unwrap_err().to_string();
            assert!(err.contains(want), "{changes:?}: {err:?} should contain {want:?}");
            if !changes.is_empty() {
                continue;
            }
            assert!(err.starts_with("t.tar"), "{err:?} names the file");
        }
        assert_eq!(std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
