//! Root file system tars whose mount points are symlinks, as debootstrap
//! leaves them in containers (`proc -> /proc`) and as distributions ship
//! them (`etc/resolv.conf -> ../run/...`): made from a fixture tar by
//! replacing entries with symlinks.

use std::path::Path;

/// Copies `src` to `dst`, dropping every entry at or under a path in
/// `links` and adding those paths as symlinks (`(path, target)`, paths
/// relative to the root, e.g. `("proc", "/proc")`).
pub fn with_links(src: &Path, dst: &Path, links: &[(&str, &str)]) {
    let norm = |p: &Path| p.to_string_lossy().trim_start_matches("./").trim_end_matches('/').to_string();
    let mut input = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut out = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = norm(&entry.path().unwrap());
        if links.iter().any(|(l, _)| path == *l || path.starts_with(&format!("{l}/"))) {
            continue;
        }
        let header = entry.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        out.append(&header, data.as_slice()).unwrap();
    }
    for (path, target) in links {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        out.append_link(&mut header, path, target).unwrap();
    }
    out.into_inner().unwrap();
}
