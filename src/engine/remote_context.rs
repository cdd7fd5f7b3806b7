//! Build inputs that are not a local directory, made into one in a private
//! temporary directory so the context walker (`context.rs`) treats them as
//! it treats a local context (.dockerignore, confinement, content-keyed
//! cache): a git repository (cloned with the `git` CLI, as buildx does), a
//! tar archive from a URL or from stdin (unpacked only by kiln's own tar
//! reader, every path confined to the directory, never by a host `tar`).
//! The directory goes when the [`Fetched`] is dropped, on success, failure
//! or Ctrl-C; one left by a killed kiln is removed by the next.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kiln_protocol::file_name;
use kiln_protocol::tar_read::{Kind, TarReader};

use super::copy::{self, ArchiveKind};

const TEMP_PREFIX: &str = "kiln-remote-";

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Interrupted(#[from] crate::cancel::Interrupted),
}

fn failed(message: impl Into<String>) -> RemoteError {
    RemoteError::Failed(message.into())
}

/// A fetched input: `root` is the directory to use, inside a temp dir that
/// lives as long as this value.
pub struct Fetched {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    /// The commit a git input was checked out at.
    pub commit: Option<String>,
}

fn temp_dir() -> Result<tempfile::TempDir, RemoteError> {
    let tmp = std::env::temp_dir();
    crate::dirs::remove_stale(&tmp, TEMP_PREFIX);
    tempfile::Builder::new()
        .prefix(&crate::dirs::owned_prefix(TEMP_PREFIX))
        .tempdir()
        .map_err(|e| failed(format!("creating a temporary directory in {}: {e}", tmp.display())))
}

/// Whether `spec` names a git repository (as BuildKit recognises one).
pub fn is_git(spec: &str) -> bool {
    copy::is_git(spec)
}

/// `URL#REF:SUBDIR` split into its parts (both after `#` optional).
fn split_git(spec: &str) -> (&str, Option<&str>, Option<&str>) {
    let Some((url, fragment)) = spec.split_once('#') else { return (spec, None, None) };
    let (reference, subdir) = match fragment.split_once(':') {
        Some((r, s)) => (r, Some(s)),
        None => (fragment, None),
    };
    (url, Some(reference).filter(|r| !r.is_empty()), subdir.filter(|s| !s.is_empty()))
}

/// Clones `spec` (`URL[#REF[:SUBDIR]]`) at REF (a branch, tag or commit;
/// default: the remote's HEAD), shallow where the server allows; the result
/// is SUBDIR of the checkout. `.git` is removed unless `keep_git_dir`.
pub fn git_checkout(spec: &str, keep_git_dir: bool, cancel: &AtomicBool) -> Result<Fetched, RemoteError> {
    let (url, reference, subdir) = split_git(spec);
    if url.starts_with('-') || reference.is_some_and(|r| r.starts_with('-')) {
        return Err(failed(format!("{spec}: not a git URL")));
    }
    let dir = temp_dir()?;
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).map_err(|e| failed(format!("creating {}: {e}", repo.display())))?;
    let what = reference.unwrap_or("HEAD");
    git(&repo, &["init", "-q"], cancel, spec)?;
    // Shallow first; the dumb HTTP protocol (and some servers) cannot, so then the whole history.
    let shallow = git(&repo, &["fetch", "-q", "--depth", "1", "--no-tags", "--", url, what], cancel, spec);
    match shallow {
        Err(RemoteError::Interrupted(i)) => return Err(i.into()),
        Err(_) => {
            git(&repo, &["fetch", "-q", "--no-tags", "--", url, what], cancel, spec)?;
        }
        Ok(_) => {}
    }
    git(&repo, &["-c", "advice.detachedHead=false", "checkout", "-q", "--detach", "FETCH_HEAD"], cancel, spec)?;
    let commit = git(&repo, &["rev-parse", "HEAD"], cancel, spec)?.trim().to_string();
    if !keep_git_dir {
        std::fs::remove_dir_all(repo.join(".git")).map_err(|e| failed(format!("{spec}: removing .git: {e}")))?;
    }
    let root = match subdir {
        None => repo,
        Some(sub) => confined_subdir(&repo, sub).map_err(|e| failed(format!("{spec}: {e}")))?,
    };
    Ok(Fetched { _dir: dir, root, commit: Some(commit) })
}

/// `root/sub`, which must be a directory inside `root` (no `..`, no link out).
pub fn confined_subdir(root: &Path, sub: &str) -> Result<PathBuf, String> {
    if sub.split('/').any(|p| p == "..") || sub.starts_with('/') {
        return Err(format!("{sub}: the path must stay inside the repository"));
    }
    let path = root.join(sub.trim_end_matches('/'));
    let real = path.canonicalize().map_err(|e| format!("{sub}: {e}"))?;
    let real_root = root.canonicalize().map_err(|e| format!("{}: {e}", root.display()))?;
    if !real.starts_with(&real_root) {
        return Err(format!("{sub}: the path leads outside the repository"));
    }
    if !real.is_dir() {
        return Err(format!("{sub}: not a directory"));
    }
    Ok(real)
}

/// Runs `git ARGS` in `dir`, without prompts; killed when `cancel` is set.
fn git(dir: &Path, args: &[&str], cancel: &AtomicBool, spec: &str) -> Result<String, RemoteError> {
    let mut cmd = Command::new("git");
    // A group of its own, so a cancel stops git's transport helpers (git-remote-https) too.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        // Network transports only: never file:// or ext:: (a Dockerfile's ADD may name the URL).
        .env("GIT_ALLOW_PROTOCOL", "https:http:ssh:git")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => failed(format!("{spec}: a git context needs the git command, which is not installed")),
            _ => failed(format!("{spec}: running git: {e}")),
        })?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if crate::cancel::check(cancel).is_err() {
            #[cfg(unix)]
            // SAFETY: plain kill(2) of the process group git leads (its pid, set above).
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            return Err(crate::cancel::Interrupted.into());
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(failed(format!("{spec}: waiting for git: {e}"))),
        }
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if !status.success() {
        return Err(failed(format!("{spec}: git {} failed: {}", args[0], err.trim())));
    }
    Ok(out)
}

/// What a URL or stdin held: a context, or (not an archive) a Dockerfile.
pub enum Input {
    Context(Fetched),
    Dockerfile(String),
}

/// GETs `url` with ADD's client: a (compressed) tar becomes a context, anything else is the Dockerfile.
pub fn fetch_url(url: &str, cancel: &AtomicBool) -> Result<Input, RemoteError> {
    let file = copy::download_to_file(url, cancel).map_err(|e| failed(e.to_string()))?;
    let kind = copy::sniff_download(&file).map_err(|e| failed(format!("{url}: {e}")))?;
    match kind {
        Some(kind) => Ok(Input::Context(unpack(kind, Box::new(file), url, cancel)?)),
        None => read_dockerfile(Box::new(file), url),
    }
}

/// Reads stdin as buildx does: a (compressed) tar is the context, anything else the Dockerfile.
pub fn from_stdin(input: impl Read + 'static, cancel: &AtomicBool) -> Result<Input, RemoteError> {
    let mut input: Box<dyn Read> = Box::new(input);
    let mut head = vec![0u8; 64 * 1024];
    let n = crate::engine::copy::read_full(&mut input, &mut head).map_err(|e| failed(format!("reading stdin: {e}")))?;
    head.truncate(n);
    let kind = copy::sniff_head(&head);
    let whole: Box<dyn Read> = Box::new(io::Cursor::new(head).chain(input));
    match kind {
        Some(kind) => Ok(Input::Context(unpack(kind, whole, "stdin", cancel)?)),
        None => read_dockerfile(whole, "stdin"),
    }
}

fn read_dockerfile(mut r: Box<dyn Read>, from: &str) -> Result<Input, RemoteError> {
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).map_err(|e| failed(format!("reading {from}: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| failed(format!("{from} is neither a tar archive nor a Dockerfile (not UTF-8 text)")))?;
    Ok(Input::Dockerfile(text))
}

fn unpack(kind: ArchiveKind, r: Box<dyn Read>, from: &str, cancel: &AtomicBool) -> Result<Fetched, RemoteError> {
    let dir = temp_dir()?;
    let root = dir.path().join("context");
    std::fs::create_dir(&root).map_err(|e| failed(format!("creating {}: {e}", root.display())))?;
    let r = copy::decompress(kind, r).map_err(|e| failed(format!("{from}: {e}")))?;
    unpack_tar(r, &root, from, cancel)?;
    Ok(Fetched { _dir: dir, root, commit: None })
}

/// Unpacks a tar stream below `root` (a fresh private directory). No entry
/// lands outside it: `..` is refused, and no entry is written through a
/// symlink (one on an entry's way is an error; an entry replaces a link).
/// Owners are not kept (a context's owners mean nothing in the image);
/// devices are skipped.
pub fn unpack_tar(r: impl Read, root: &Path, from: &str, cancel: &AtomicBool) -> Result<(), RemoteError> {
    let bad = |m: String| failed(format!("{from}: {m}"));
    let mut ar = TarReader::new(r);
    let mut dirs: Vec<(PathBuf, u32, i64)> = Vec::new();
    while let Some(member) = ar.next_member().map_err(|e| bad(e.to_string()))? {
        crate::cancel::check(cancel)?;
        let raw = file_name::from_bytes(&member.path).into_owned();
        let Some(rel) = copy::member_path(&raw, from).map_err(|e| bad(e.to_string()))? else { continue };
        let path = make_parents(root, &rel).map_err(|m| bad(format!("{raw}: {m}")))?;
        let io_err = |e: io::Error| bad(format!("{raw}: {e}"));
        let existing = std::fs::symlink_metadata(&path).ok();
        match (&member.kind, &existing) {
            (Kind::Dir, Some(m)) if m.is_dir() => {}
            (_, Some(m)) if m.is_dir() => std::fs::remove_dir_all(&path).map_err(io_err)?,
            (_, Some(_)) => std::fs::remove_file(&path).map_err(io_err)?,
            (_, None) => {}
        }
        let mode = member.mode & 0o7777;
        match member.kind {
            Kind::Dir => {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    std::fs::create_dir(&path).map_err(io_err)?;
                }
                // Set once the children are in: writable until then, and their creation changes the mtime.
                dirs.push((path, mode, member.mtime));
            }
            Kind::File => {
                let mut out = create_new(&path).map_err(io_err)?;
                io::copy(&mut ar, &mut out).map_err(io_err)?;
                finish_file(&out, mode, member.mtime).map_err(io_err)?;
            }
            Kind::HardLink => {
                let link = file_name::from_bytes(&member.link).into_owned();
                let to = copy::member_path(&link, from).map_err(|e| bad(e.to_string()))?.unwrap_or_default();
                let target = existing_file(root, &to).ok_or_else(|| bad(format!("{raw}: hardlink to {link}, which is not an earlier file of the archive")))?;
                std::fs::hard_link(target, &path).map_err(io_err)?;
            }
            Kind::Symlink => {
                let target = file_name::from_bytes(&member.link).into_owned();
                crate::engine::fs_export::symlink(&target, &path).map_err(io_err)?;
            }
            // Devices and fifos are not build inputs; other kinds carry no file.
            _ => {}
        }
    }
    for (path, mode, mtime) in dirs.into_iter().rev() {
        set_mode(&path, mode).and_then(|_| set_mtime(&path, mtime)).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// `root/rel` after creating its missing parent directories; an existing
/// parent that is not a real directory (a symlink, a file) is refused.
fn make_parents(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let mut path = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        path.push(file_name::to_os(part));
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{part} on its way is not a directory (entries are never written through a symlink)")),
            Err(_) => std::fs::create_dir(&path).map_err(|e| e.to_string())?,
        }
    }
    path.push(file_name::to_os(parts[parts.len() - 1]));
    Ok(path)
}

/// `root/rel` when it is a regular file reached through real directories only.
fn existing_file(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    for part in rel.split('/') {
        path.push(file_name::to_os(part));
        let m = std::fs::symlink_metadata(&path).ok()?;
        if m.file_type().is_symlink() {
            return None;
        }
    }
    std::fs::symlink_metadata(&path).ok().filter(|m| m.is_file()).map(|_| path)
}

fn create_new(path: &Path) -> io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    opts.open(path)
}

fn finish_file(file: &std::fs::File, mode: u32, mtime: i64) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    file.set_modified(system_time(mtime))
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    std::fs::File::open(path)?.set_modified(system_time(mtime))
}

fn system_time(secs: i64) -> std::time::SystemTime {
    if secs >= 0 {
        std::time::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        std::time::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    #[cfg(unix)]
    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o640);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        // Raw names, so a test can hold `..` (the tar crate's helpers refuse it).
        h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn git_specs_split_into_url_ref_and_subdir() {
        assert_eq!(split_git("https://h/r.git"), ("https://h/r.git", None, None));
        assert_eq!(split_git("https://h/r.git#v1"), ("https://h/r.git", Some("v1"), None));
        assert_eq!(split_git("https://h/r.git#main:app/web"), ("https://h/r.git", Some("main"), Some("app/web")));
        assert_eq!(split_git("https://h/r.git#:sub"), ("https://h/r.git", None, Some("sub")));
    }

    #[cfg(unix)]
    #[test]
    fn tar_members_land_inside_the_root_only() {
        let cancel = AtomicBool::new(false);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let ok = tar_of(|b| {
            file(b, "a/b.txt", b"hello");
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "up", "../../outside").unwrap();
        });
        unpack_tar(&ok[..], &root, "t.tar", &cancel).unwrap();
        assert_eq!(std::fs::read(root.join("a/b.txt")).unwrap(), b"hello");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(root.join("a/b.txt")).unwrap().mode() & 0o777, 0o640);
        assert_eq!(std::fs::read_link(root.join("up")).unwrap(), Path::new("../../outside"), "kept as a link; the walker confines it");

        let climbs = tar_of(|b| file(b, "../evil", b"x"));
        let e = unpack_tar(&climbs[..], &root, "t.tar", &cancel).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        assert!(!dir.path().join("evil").exists());

        // A file written through a symlink the archive made earlier is refused.
        let through = tar_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "esc", dir.path()).unwrap();
            file(b, "esc/pwned", b"x");
        });
        let fresh = dir.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        let e = unpack_tar(&through[..], &fresh, "t.tar", &cancel).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert!(!dir.path().join("pwned").exists());
    }
}
