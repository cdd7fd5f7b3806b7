use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};

use kiln_protocol::{EntryKind, LayerEntry, Xattr};

use super::*;
use crate::engine::context::BuildContext;
use crate::engine::layer_tar::{write_layer, ContentSource, LayerOptions};
use crate::engine::rootfs::LayerStack;
use crate::oci::store::Store;

/// One COPY/ADD as a test writes it; `run` fills in the rest.
#[derive(Default, Clone)]
struct Step {
    add: bool,
    sources: Vec<String>,
    inline: Vec<(String, String)>,
    dest: String,
    workdir: String,
    owner: Option<Identity>,
    chmod: Option<String>,
    parents: bool,
    exclude: Vec<String>,
    checksum: Option<String>,
    unpack: Option<bool>,
}

fn copy(sources: &[&str], dest: &str) -> Step {
    Step { sources: sources.iter().map(|s| s.to_string()).collect(), dest: dest.into(), workdir: "/".into(), ..Default::default() }
}

fn add(sources: &[&str], dest: &str) -> Step {
    Step { add: true, ..copy(sources, dest) }
}

impl Step {
    fn input<'a>(&'a self, dest_root: &'a LayerStack) -> CopyInput<'a> {
        CopyInput {
            inline: &self.inline,
            owner: self.owner.clone(),
            chmod: self.chmod.as_deref(),
            parents: self.parents,
            exclude: &self.exclude,
            checksum: self.checksum.as_deref(),
            unpack: self.unpack,
            ..CopyInput::new(self.add, &self.sources, &self.dest, &self.workdir, dest_root)
        }
    }

    fn run(&self, ctx: &BuildContext) -> Result<CopyPlan, CopyError> {
        self.run_on(ctx, &LayerStack::empty())
    }

    fn run_on(&self, ctx: &BuildContext, dest_root: &LayerStack) -> Result<CopyPlan, CopyError> {
        plan(&self.input(dest_root), CopySource::Context(ctx))
    }
}

/// A context directory from (path, content) pairs; a path ending in `/` is a directory.
fn context(files: &[(&str, &str)]) -> (tempfile::TempDir, BuildContext) {
    let dir = tempfile::tempdir().unwrap();
    for (p, content) in files {
        let host = dir.path().join(p);
        if p.ends_with('/') {
            std::fs::create_dir_all(&host).unwrap();
        } else {
            std::fs::create_dir_all(host.parent().unwrap()).unwrap();
            std::fs::write(&host, content).unwrap();
        }
    }
    let c = BuildContext::open(dir.path(), None).unwrap();
    (dir, c)
}

fn reopen(dir: &tempfile::TempDir) -> BuildContext {
    BuildContext::open(dir.path(), None).unwrap()
}

/// path → short description of kind (`f`, `d`, `l:<target>`, `h:<link>`).
fn kinds(plan: &CopyPlan) -> BTreeMap<String, String> {
    plan.entries
        .iter()
        .map(|e| {
            let k = match &e.kind {
                EntryKind::File { link: Some(l), .. } => format!("h:{l}"),
                EntryKind::File { .. } => "f".to_string(),
                EntryKind::Dir { .. } => "d".to_string(),
                EntryKind::Symlink { target } => format!("l:{target}"),
                EntryKind::Whiteout => "wh".to_string(),
                other => format!("{other:?}"),
            };
            (e.path.clone(), k)
        })
        .collect()
}

fn paths(plan: &CopyPlan) -> Vec<String> {
    kinds(plan).into_keys().collect()
}

fn entry<'p>(plan: &'p CopyPlan, path: &str) -> &'p LayerEntry {
    plan.entries.iter().find(|e| e.path == path).unwrap_or_else(|| panic!("no entry {path} in {:?}", paths(plan)))
}

fn read(plan: &mut CopyPlan, path: &str) -> Vec<u8> {
    let e = entry(plan, path).clone();
    let mut out = Vec::new();
    plan.contents.open(&e).unwrap().read_to_end(&mut out).unwrap();
    out
}

fn text(plan: &mut CopyPlan, path: &str) -> String {
    String::from_utf8(read(plan, path)).unwrap()
}

#[cfg(unix)]
fn symlink(dir: &tempfile::TempDir, target: &str, link: &str) {
    std::os::unix::fs::symlink(target, dir.path().join(link)).unwrap();
}

#[cfg(unix)]
fn set_mode(dir: &tempfile::TempDir, path: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join(path), std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------- COPY basics

#[test]
fn file_to_new_path_and_into_directory() {
    let (_d, ctx) = context(&[("a.txt", "A")]);
    let mut p = copy(&["a.txt"], "/b.txt").run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["b.txt"]);
    assert_eq!(text(&mut p, "b.txt"), "A");
    let p = copy(&["a.txt"], "/opt/app/").run(&ctx).unwrap();
    assert_eq!(kinds(&p), BTreeMap::from([("opt".into(), "d".into()), ("opt/app".into(), "d".into()), ("opt/app/a.txt".into(), "f".into())]));
    let created = entry(&p, "opt/app");
    assert_eq!((created.mode, created.uid, created.gid), (0o755, 0, 0));
}

#[test]
fn relative_dest_joins_workdir() {
    let (_d, ctx) = context(&[("a.txt", "A")]);
    let p = Step { workdir: "/srv/www".into(), ..copy(&["a.txt"], ".") }.run(&ctx).unwrap();
    assert!(paths(&p).contains(&"srv/www/a.txt".to_string()), "{:?}", paths(&p));
    let p = Step { workdir: "/srv".into(), ..copy(&["a.txt"], "conf/x.txt") }.run(&ctx).unwrap();
    assert!(paths(&p).contains(&"srv/conf/x.txt".to_string()));
}

#[test]
fn directory_source_copies_its_contents() {
    let (_d, ctx) = context(&[("src/a", "1"), ("src/sub/b", "2"), ("src/empty/", "")]);
    let p = copy(&["src"], "/app").run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["app", "app/a", "app/empty", "app/sub", "app/sub/b"], "the contents, not the dir itself");
    let p = copy(&["src/"], "/").run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["a", "empty", "sub", "sub/b"]);
}

#[test]
fn multiple_sources_need_a_directory_dest() {
    let (_d, ctx) = context(&[("a", "1"), ("b", "2")]);
    let err = copy(&["a", "b"], "/x").run(&ctx).err().unwrap();
    assert!(err.to_string().contains("must be a directory and end with a /"), "{err}");
    let p = copy(&["a", "b"], "/x/").run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["x", "x/a", "x/b"]);
}

#[test]
fn missing_source_is_an_error_naming_it() {
    let (_d, ctx) = context(&[("a", "1")]);
    let err = copy(&["missing"], "/x").run(&ctx).err().unwrap();
    assert_eq!(err.to_string(), "COPY failed: \"/missing\": not found");
    let err = copy(&["a", "nope/deeper"], "/x/").run(&ctx).err().unwrap();
    assert!(err.to_string().contains("\"/nope/deeper\": not found"), "{err}");
}

#[test]
fn sources_outside_the_context_are_refused() {
    let (_d, ctx) = context(&[("a", "1")]);
    for src in ["../x", "a/../../x", "/../x", ".."] {
        let err = copy(&[src], "/x").run(&ctx).err().unwrap();
        assert_eq!(err.to_string(), format!("COPY source {src} is outside the build context"));
    }
    // `..` that stays inside is fine.
    assert_eq!(paths(&copy(&["sub/../a"], "/x").run(&ctx).unwrap()), vec!["x"]);
}

#[test]
fn wildcards_follow_go_filepath_match() {
    let (_d, ctx) = context(&[("a1.txt", "1"), ("a2.txt", "2"), ("b.txt", "3"), ("dir/x.txt", "4"), ("dir/y.md", "5")]);
    let p = copy(&["a?.txt", "[b-c]*"], "/out/").run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["out", "out/a1.txt", "out/a2.txt", "out/b.txt"]);
    let p = copy(&["*/*.txt"], "/out/").run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["out", "out/x.txt"], "* does not cross /");
    let p = copy(&["di*"], "/out/").run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["out", "out/x.txt", "out/y.md"], "a matched directory copies its contents");
}

#[test]
fn wildcard_without_matches_copies_nothing_like_buildkit() {
    // BuildKit (AllowEmptyWildcard) accepts this, and `COPY requirements.* .`
    // is a common idiom for optional files; only literal paths must exist.
    let (_d, ctx) = context(&[("a", "1")]);
    let p = copy(&["*.nomatch", "a"], "/x/").run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["x", "x/a"]);
    let p = copy(&["*.nomatch"], "/x/").run(&ctx).unwrap();
    assert!(p.entries.is_empty(), "{:?}", paths(&p));
}

#[test]
fn a_wildcard_matching_several_files_into_a_file_dest_is_an_error() {
    let (_d, ctx) = context(&[("a.txt", "1"), ("b.txt", "2")]);
    let err = copy(&["*.txt"], "/one.txt").run(&ctx).err().unwrap();
    assert!(err.to_string().contains("must be a directory and end with a /"), "{err}");
    assert_eq!(paths(&copy(&["a*.txt"], "/one.txt").run(&ctx).unwrap()), vec!["one.txt"]);
}

#[cfg(unix)]
#[test]
fn modes_and_mtimes_are_kept_and_owner_is_root() {
    let (d, _) = context(&[("run.sh", "#!/bin/sh"), ("dir/f", "")]);
    set_mode(&d, "run.sh", 0o4751);
    set_mode(&d, "dir", 0o700);
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123);
    std::fs::File::options().write(true).open(d.path().join("run.sh")).unwrap().set_modified(t).unwrap();
    let ctx = reopen(&d);
    let p = copy(&["."], "/app/").run(&ctx).unwrap();
    let e = entry(&p, "app/run.sh");
    assert_eq!((e.mode, e.uid, e.gid, e.mtime, e.mtime_nsec), (0o4751, 0, 0, 1_600_000_000, 123));
    assert_eq!(entry(&p, "app/dir").mode, 0o700);
}

#[test]
fn chown_owns_copied_entries_and_created_parents() {
    let (_d, ctx) = context(&[("src/f", "1")]);
    let p = Step { owner: Some(Identity { uid: 1000, gid: 50, groups: vec![] }), ..copy(&["src"], "/a/b/") }.run(&ctx).unwrap();
    for e in &p.entries {
        assert_eq!((e.uid, e.gid), (1000, 50), "{}", e.path);
    }
}

#[cfg(unix)]
#[test]
fn chmod_octal_and_symbolic() {
    let (d, _) = context(&[("bin/tool", "x"), ("bin/data", "y")]);
    set_mode(&d, "bin/tool", 0o744);
    set_mode(&d, "bin/data", 0o600);
    let ctx = reopen(&d);
    let p = Step { chmod: Some("0640".into()), ..copy(&["bin"], "/b/") }.run(&ctx).unwrap();
    assert_eq!((entry(&p, "b/tool").mode, entry(&p, "b/data").mode), (0o640, 0o640));
    let p = Step { chmod: Some("go+rX".into()), ..copy(&["bin"], "/b/") }.run(&ctx).unwrap();
    assert_eq!((entry(&p, "b/tool").mode, entry(&p, "b/data").mode), (0o755, 0o644));
    let err = Step { chmod: Some("999".into()), ..copy(&["bin"], "/b/") }.run(&ctx).err().unwrap();
    assert!(err.to_string().contains("invalid chmod parameter"), "{err}");
}

#[test]
fn heredocs_are_0644_files() {
    let (_d, ctx) = context(&[]);
    let step = Step { inline: vec![("hello.sh".into(), "echo hi\n".into())], ..copy(&[], "/usr/local/bin/") };
    let mut p = step.run(&ctx).unwrap();
    let e = entry(&p, "usr/local/bin/hello.sh");
    assert_eq!((e.mode, &e.kind), (0o644, &EntryKind::File { size: 8, link: None }));
    assert_eq!(text(&mut p, "usr/local/bin/hello.sh"), "echo hi\n");
    let p = Step { chmod: Some("755".into()), inline: vec![("x".into(), "".into())], ..copy(&[], "/run.sh") }.run(&ctx).unwrap();
    assert_eq!(entry(&p, "run.sh").mode, 0o755, "a dest without / names the file");
}

#[test]
fn exclude_patterns_apply_below_each_source() {
    let (_d, ctx) = context(&[
        ("dir1/a.png", "1"),
        ("dir1/b.txt", "2"),
        ("dir2/c.pdf", "3"),
        ("dir2/sub/d.png", "4"),
        ("top.txt", "5"),
        ("top.md", "6"),
    ]);
    let p = Step { exclude: vec!["*/*.png".into()], ..copy(&["."], "/1/") }.run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["1", "1/dir1", "1/dir1/b.txt", "1/dir2", "1/dir2/c.pdf", "1/dir2/sub", "1/dir2/sub/d.png", "1/top.md", "1/top.txt"]);
    let p = Step { exclude: vec!["*.png".into(), "*.pdf".into()], ..copy(&["dir*"], "/4/") }.run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["4", "4/b.txt", "4/sub", "4/sub/d.png"]);
    let p = Step { exclude: vec!["*.md".into()], ..copy(&["top*"], "/t/") }.run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["t", "t/top.txt"], "wildcard matches are excluded too (docs: COPY --exclude=*.txt hom* /mydir/)");
    let p = Step { exclude: vec!["dir2".into(), "!dir2/c.pdf".into()], ..copy(&["."], "/e/") }.run(&ctx).unwrap();
    assert!(paths(&p).contains(&"e/dir2/c.pdf".to_string()) && !paths(&p).contains(&"e/dir2/sub".to_string()), "{:?}", paths(&p));
}

#[test]
fn parents_keep_source_paths_with_optional_pivot() {
    let (_d, ctx) = context(&[("x/y/a.txt", "1"), ("x/y/b.md", "2"), ("x/z/c.txt", "3"), ("w/d.txt", "4")]);
    let p = Step { parents: true, ..copy(&["x/y/a.txt", "w/d.txt"], "/dst/") }.run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["dst", "dst/w", "dst/w/d.txt", "dst/x", "dst/x/y", "dst/x/y/a.txt"]);
    let p = Step { parents: true, ..copy(&["x/./*/*.txt"], "/dst/") }.run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["dst", "dst/y", "dst/y/a.txt", "dst/z", "dst/z/c.txt"]);
    let p = Step { parents: true, ..copy(&["x/y"], "/dst/") }.run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["dst", "dst/x", "dst/x/y", "dst/x/y/a.txt", "dst/x/y/b.md"]);
    let err = Step { parents: true, ..copy(&["x/nope.txt"], "/dst/") }.run(&ctx).err().unwrap();
    assert!(err.to_string().contains("\"/x/nope.txt\": not found"), "{err}");
}

#[cfg(unix)]
#[test]
fn parents_take_their_metadata_from_the_source_dirs() {
    let (d, _) = context(&[("x/y/a.txt", "1")]);
    set_mode(&d, "x", 0o700);
    let ctx = reopen(&d);
    let p = Step { parents: true, ..copy(&["x/y/a.txt"], "/dst/") }.run(&ctx).unwrap();
    assert_eq!(entry(&p, "dst/x").mode, 0o700);
    assert_eq!(entry(&p, "dst").mode, 0o755);
}

// ---------------------------------------------------------------- .dockerignore

#[test]
fn dockerignore_hides_paths_from_copy_with_reincludes() {
    let (d, _) = context(&[
        ("app/main.rs", "fn main(){}"),
        ("app/secret.env", "KEY=1"),
        ("docs/a.md", "a"),
        ("docs/keep.md", "k"),
        ("Dockerfile", "FROM scratch"),
    ]);
    std::fs::write(d.path().join(".dockerignore"), "**/*.env\ndocs\n!docs/keep.md\nDockerfile\n").unwrap();
    let ctx = reopen(&d);
    let p = copy(&["."], "/s/").run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["s", "s/.dockerignore", "s/app", "s/app/main.rs", "s/docs", "s/docs/keep.md"]);
    let err = copy(&["app/secret.env"], "/x").run(&ctx).err().unwrap();
    assert!(err.to_string().contains("not found"), "excluded files do not exist for COPY: {err}");
    assert!(copy(&["Dockerfile"], "/x").run(&ctx).is_err());
    assert_eq!(paths(&copy(&["docs/*"], "/d/").run(&ctx).unwrap()), vec!["d", "d/keep.md"]);
}

// ---------------------------------------------------------------- symlinks and hardlinks

#[cfg(unix)]
#[test]
fn symlinks_inside_a_tree_stay_symlinks_and_never_lead_out() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "host secret").unwrap();
    let (d, _) = context(&[("tree/file", "1"), ("real/inner", "2")]);
    symlink(&d, "file", "tree/rel");
    symlink(&d, outside.path().join("secret").to_str().unwrap(), "tree/abs");
    symlink(&d, "../../..", "tree/up");
    let out_dir = outside.path().to_str().unwrap().to_string();
    symlink(&d, &out_dir, "escape");
    symlink(&d, "real", "linkdir");
    let ctx = reopen(&d);
    let p = copy(&["tree"], "/t/").run(&ctx).unwrap();
    let k = kinds(&p);
    assert_eq!(k["t/rel"], "l:file");
    assert_eq!(k["t/abs"], format!("l:{}", outside.path().join("secret").display()), "copied as a link, not followed");
    assert_eq!(k["t/up"], "l:../../..");
    // A source path through a symlink pointing outside resolves inside the context root.
    let err = copy(&["escape/secret"], "/x").run(&ctx).err().unwrap();
    assert!(err.to_string().contains("not found"), "{err}");
    // A symlinked directory inside the context may be traversed, and a source that is a link is followed (BuildKit's FollowSymlinks).
    let mut p = copy(&["linkdir/inner"], "/x").run(&ctx).unwrap();
    assert_eq!(text(&mut p, "x"), "2");
    let p = copy(&["linkdir"], "/y/").run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["y", "y/inner"]);
}

#[cfg(unix)]
#[test]
fn hardlinks_within_a_tree_stay_hardlinks() {
    let (d, _) = context(&[("t/b", "shared")]);
    std::fs::hard_link(d.path().join("t/b"), d.path().join("t/a")).unwrap();
    let ctx = reopen(&d);
    let mut p = copy(&["t"], "/h/").run(&ctx).unwrap();
    let k = kinds(&p);
    assert_eq!((k["h/a"].as_str(), k["h/b"].as_str()), ("f", "h:h/a"), "the first in layer order holds the bytes");
    assert_eq!(text(&mut p, "h/a"), "shared");
}

// ---------------------------------------------------------------- destination in the stage's file system

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path().join("store")).unwrap();
    (d, s)
}

#[derive(Default)]
struct Bytes(HashMap<String, Vec<u8>>);

impl ContentSource for Bytes {
    fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(&self.0.get(&entry.path).ok_or_else(|| io::Error::other(entry.path.clone()))?[..]))
    }
}

fn le(path: &str, kind: EntryKind, mode: u32, uid: u32) -> LayerEntry {
    LayerEntry { path: path.into(), kind, mode, uid, gid: uid, mtime: 1_000, mtime_nsec: 0, xattrs: vec![] }
}

fn dir(path: &str, mode: u32, uid: u32) -> LayerEntry {
    le(path, EntryKind::Dir { opaque: false }, mode, uid)
}

fn link(path: &str, target: &str) -> LayerEntry {
    le(path, EntryKind::Symlink { target: target.into() }, 0o777, 0)
}

/// A one-layer image with `entries`; files get `content` as their bytes.
fn image(s: &Store, mut entries: Vec<LayerEntry>, files: &[(&str, &str)]) -> LayerStack {
    let mut bytes = Bytes::default();
    for (p, c) in files {
        entries.push(le(p, EntryKind::File { size: c.len() as u64, link: None }, 0o640, 7));
        bytes.0.insert(p.to_string(), c.as_bytes().to_vec());
    }
    let layer = write_layer(s, &mut entries, &mut bytes, &LayerOptions::default()).unwrap().unwrap();
    LayerStack::open(s, &[layer.descriptor]).unwrap()
}

#[test]
fn existing_parents_keep_their_metadata_and_symlinked_dests_are_followed() {
    let (_sd, s) = store();
    let base = image(
        &s,
        vec![dir("usr", 0o755, 0), dir("usr/lib", 0o700, 5), link("lib", "usr/lib"), dir("etc", 0o755, 0)],
        &[("etc/conf", "old")],
    );
    let (_d, ctx) = context(&[("a.so", "elf")]);
    let p = Step { owner: Some(Identity { uid: 9, gid: 9, groups: vec![] }), ..copy(&["a.so"], "/lib/") }.run_on(&ctx, &base).unwrap();
    assert_eq!(paths(&p), vec!["usr", "usr/lib", "usr/lib/a.so"], "the link's target gets the file");
    let lib = entry(&p, "usr/lib");
    assert_eq!((lib.mode, lib.uid), (0o700, 5), "an existing parent is not chowned");
    assert_eq!(entry(&p, "usr/lib/a.so").uid, 9);
    // An existing directory as dest (no trailing slash) takes the file inside it.
    assert_eq!(paths(&copy(&["a.so"], "/etc").run_on(&ctx, &base).unwrap()), vec!["etc", "etc/a.so"]);
    // A file cannot become a parent; a directory cannot be replaced by a file.
    let err = copy(&["a.so"], "/etc/conf/x").run_on(&ctx, &base).err().unwrap();
    assert!(err.to_string().contains("cannot copy to non-directory: /etc/conf"), "{err}");
    let (_d2, ctx2) = context(&[("d/usr", "file")]);
    let err = copy(&["d"], "/").run_on(&ctx2, &base).err().unwrap();
    assert!(err.to_string().contains("cannot replace to directory /usr with file"), "{err}");
}

#[test]
fn copy_from_another_stage_keeps_owners_unless_chown() {
    let (_sd, s) = store();
    let builder = image(
        &s,
        vec![dir("out", 0o755, 0), dir("out/bin", 0o750, 3), link("out/bin/alias", "tool"), link("current", "out")],
        &[("out/bin/tool", "binary"), ("out/readme", "hi")],
    );
    let stage = LayerStack::empty();
    let step = copy(&["/current/bin"], "/usr/local/bin");
    let mut p = plan(&step.input(&stage), CopySource::Stack { stack: &builder, store: &s }).unwrap();
    assert_eq!(kinds(&p).into_iter().collect::<Vec<_>>(), vec![
        ("usr".into(), "d".into()),
        ("usr/local".into(), "d".into()),
        ("usr/local/bin".into(), "d".into()),
        ("usr/local/bin/alias".into(), "l:tool".into()),
        ("usr/local/bin/tool".into(), "f".into()),
    ]);
    assert_eq!((entry(&p, "usr/local/bin/tool").uid, entry(&p, "usr/local/bin/tool").mode), (7, 0o640));
    assert_eq!(text(&mut p, "usr/local/bin/tool"), "binary");
    let wild = copy(&["/out/*"], "/o/");
    let p = plan(&wild.input(&stage), CopySource::Stack { stack: &builder, store: &s }).unwrap();
    assert_eq!(paths(&p), vec!["o", "o/alias", "o/readme", "o/tool"]);
    let chown = Step { owner: Some(Identity { uid: 1, gid: 2, groups: vec![] }), ..copy(&["out/readme"], "/r") };
    let p = plan(&chown.input(&stage), CopySource::Stack { stack: &builder, store: &s }).unwrap();
    assert_eq!((entry(&p, "r").uid, entry(&p, "r").gid), (1, 2));
    let missing = copy(&["/nope"], "/r");
    let err = plan(&missing.input(&stage), CopySource::Stack { stack: &builder, store: &s }).err().unwrap();
    assert_eq!(err.to_string(), "COPY failed: \"/nope\": not found");
}

#[test]
fn plans_write_real_layers() {
    let (_sd, s) = store();
    let (_d, ctx) = context(&[("a/x", "1"), ("a/y", "22")]);
    let mut p = copy(&["a"], "/w/").run(&ctx).unwrap();
    let layer = write_layer(&s, &mut p.entries, p.contents.as_mut(), &LayerOptions::default()).unwrap().unwrap();
    let stack = LayerStack::open(&s, &[layer.descriptor]).unwrap();
    assert_eq!(stack.read_file(&s, "w/y").unwrap().unwrap(), b"22");
}

// ---------------------------------------------------------------- checksum

#[test]
fn checksum_is_stable_and_sensitive() {
    let (d, ctx) = context(&[("a/x", "hello"), ("a/y", "world")]);
    let sum = |ctx: &BuildContext, step: &Step| step.run(ctx).unwrap().checksum;
    let base = sum(&ctx, &copy(&["a"], "/w/"));
    assert!(base.starts_with("sha256:") && base.len() == 71);
    assert_eq!(base, sum(&ctx, &copy(&["a"], "/w/")), "equal inputs, equal checksum");
    // mtimes do not count
    std::fs::File::options().write(true).open(d.path().join("a/x")).unwrap().set_modified(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(base, sum(&reopen(&d), &copy(&["a"], "/w/")));
    // one byte does
    std::fs::write(d.path().join("a/x"), "hellp").unwrap();
    assert_ne!(base, sum(&reopen(&d), &copy(&["a"], "/w/")));
    std::fs::write(d.path().join("a/x"), "hello").unwrap();
    let ctx = reopen(&d);
    assert_eq!(base, sum(&ctx, &copy(&["a"], "/w/")));
    // and so do the options that change the result
    assert_ne!(base, sum(&ctx, &copy(&["a"], "/v/")));
    assert_ne!(base, sum(&ctx, &Step { chmod: Some("600".into()), ..copy(&["a"], "/w/") }));
    assert_ne!(base, sum(&ctx, &Step { owner: Some(Identity { uid: 1, gid: 1, groups: vec![] }), ..copy(&["a"], "/w/") }));
}

// ---------------------------------------------------------------- ADD: archives

fn tar_bytes() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o750);
    h.set_uid(11);
    h.set_gid(12);
    h.set_mtime(1_234_567);
    h.set_size(0);
    b.append_data(&mut h, "pkg/", io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_uid(11);
    h.set_gid(12);
    h.set_mtime(1_234_567);
    h.set_size(5);
    b.append_data(&mut h, "./pkg/bin/run", &b"run!\n"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "pkg/latest", "bin/run").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "pkg/again", "pkg/bin/run").unwrap();
    b.into_inner().unwrap()
}

fn compress(kind: &str, raw: &[u8]) -> Vec<u8> {
    match kind {
        "tar" => raw.to_vec(),
        "gz" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(raw).unwrap();
            e.finish().unwrap()
        }
        "bz2" => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(raw).unwrap();
            e.finish().unwrap()
        }
        "xz" => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(raw).unwrap();
            e.finish().unwrap()
        }
        "zst" => zstd::encode_all(raw, 1).unwrap(),
        _ => unreachable!(),
    }
}

#[test]
fn add_unpacks_archives_recognised_by_their_bytes() {
    let raw = tar_bytes();
    for kind in ["tar", "gz", "bz2", "xz", "zst"] {
        let (d, _) = context(&[]);
        // Misleading names on purpose: detection is by magic bytes.
        std::fs::write(d.path().join("archive.bin"), compress(kind, &raw)).unwrap();
        let ctx = reopen(&d);
        let mut p = add(&["archive.bin"], "/opt").run(&ctx).unwrap();
        assert_eq!(
            kinds(&p).into_iter().collect::<Vec<_>>(),
            vec![
                ("opt".into(), "d".into()),
                ("opt/pkg".into(), "d".into()),
                ("opt/pkg/again".into(), "f".into()),
                ("opt/pkg/bin".into(), "d".into()),
                ("opt/pkg/bin/run".into(), "h:opt/pkg/again".into()),
                ("opt/pkg/latest".into(), "l:bin/run".into()),
            ],
            "{kind}"
        );
        assert_eq!(text(&mut p, "opt/pkg/again"), "run!\n", "{kind}: the hardlink group's first path holds the bytes");
        let pkg = entry(&p, "opt/pkg");
        assert_eq!((pkg.mode, pkg.uid, pkg.gid, pkg.mtime), (0o750, 11, 12, 1_234_567), "{kind}: archive metadata kept");
        let (_sd, s) = store();
        write_layer(&s, &mut p.entries, p.contents.as_mut(), &LayerOptions::default()).unwrap();
    }
}

#[test]
fn add_refuses_a_corrupt_compressed_archive_naming_it() {
    let good = compress("gz", &tar_bytes());
    let mut bad_crc = good.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff; // the gzip trailer's CRC32
    // 64 flipped bytes in the middle of a larger archive's stream: the
    // start still reads as a tar archive, so only the checksum can tell.
    let big = {
        let mut b = tar::Builder::new(Vec::new());
        let mut x = 0x2545_f491_u32;
        let data: Vec<u8> = (0..200_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 3 == 0 { x as u8 } else { b'a' + (i % 7) as u8 }
            })
            .collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "big.bin", &data[..]).unwrap();
        compress("gz", &b.into_inner().unwrap())
    };
    let mut flipped = big.clone();
    let mid = flipped.len() / 2;
    for b in &mut flipped[mid..mid + 64] {
        *b ^= 0x5a;
    }
    for (name, bytes) in [("crc.tgz", bad_crc), ("flipped.tgz", flipped)] {
        let (d, _) = context(&[]);
        std::fs::write(d.path().join(name), bytes).unwrap();
        let ctx = reopen(&d);
        let err = add(&[name], "/opt/").run(&ctx).map(|p| paths(&p)).unwrap_err().to_string();
        assert!(err.starts_with(&format!("ADD /{name}: ")), "{name}: {err}");
    }
    // The intact archive unpacks, also with data after its end (ignored, as by Docker).
    let trailing = {
        let mut raw = tar_bytes();
        raw.extend(std::iter::repeat_n(7u8, 2 << 20));
        compress("gz", &raw)
    };
    for (name, bytes) in [("ok.tgz", good), ("trailing.tgz", trailing)] {
        let (d, _) = context(&[]);
        std::fs::write(d.path().join(name), bytes).unwrap();
        assert!(paths(&add(&[name], "/opt/").run(&reopen(&d)).unwrap()).contains(&"opt/pkg/bin/run".to_string()), "{name}");
    }
}

#[test]
fn add_archive_options() {
    let (d, _) = context(&[("notes.tar.gz", "just text, not gzip")]);
    std::fs::write(d.path().join("a.tgz"), compress("gz", &tar_bytes())).unwrap();
    let ctx = reopen(&d);
    let p = Step { unpack: Some(false), ..add(&["a.tgz"], "/x/") }.run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["x", "x/a.tgz"], "--unpack=false copies the archive");
    let p = copy(&["a.tgz"], "/x/").run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["x", "x/a.tgz"], "COPY never unpacks");
    let p = add(&["notes.tar.gz"], "/x/").run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["x", "x/notes.tar.gz"], "a name is not an archive");
    let p = Step { owner: Some(Identity { uid: 5, gid: 6, groups: vec![] }), ..add(&["a.tgz"], "/y") }.run(&ctx).unwrap();
    assert!(p.entries.iter().all(|e| (e.uid, e.gid) == (5, 6)), "--chown overrides archive owners");
}

#[test]
fn add_unpacks_through_symlinks_of_the_stage_like_docker() {
    // A usrmerged base: /lib -> usr/lib. An archive with lib/x (and no lib/ header) lands in /usr/lib/x.
    let (_sd, s) = store();
    let base = image(&s, vec![dir("usr", 0o755, 0), dir("usr/lib", 0o755, 0), link("lib", "usr/lib")], &[]);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(1);
    b.append_data(&mut h, "lib/libx.so", &b"x"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "lib/liby.so", "lib/libx.so").unwrap();
    let (d, _) = context(&[]);
    std::fs::write(d.path().join("root.tar"), b.into_inner().unwrap()).unwrap();
    let mut p = add(&["root.tar"], "/").run_on(&reopen(&d), &base).unwrap();
    assert_eq!(kinds(&p).into_iter().collect::<Vec<_>>(), vec![
        ("usr".into(), "d".into()),
        ("usr/lib".into(), "d".into()),
        ("usr/lib/libx.so".into(), "f".into()),
        ("usr/lib/liby.so".into(), "h:usr/lib/libx.so".into()),
    ]);
    assert_eq!(text(&mut p, "usr/lib/libx.so"), "x");
}

#[test]
fn add_refuses_archive_entries_that_climb_out() {
    let mut raw = Vec::new();
    {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(3);
        // tar::Builder refuses `..`; write the name by hand.
        h.as_old_mut().name[..10].copy_from_slice(b"../escaped");
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        raw.extend_from_slice(b"bad");
        raw.resize(512 * 2, 0);
        raw.resize(512 * 4, 0);
    }
    let (d, _) = context(&[]);
    std::fs::write(d.path().join("evil.tar"), raw).unwrap();
    let err = add(&["evil.tar"], "/x").run(&reopen(&d)).err().unwrap();
    assert!(err.to_string().contains("points outside the destination"), "{err}");
}

#[test]
fn add_reads_archives_by_the_one_tar_rule() {
    // An xattr value holding newlines and NULs, one of them shaped like a
    // PAX record: it stays one value, and the member keeps its own path.
    let value = b"\x01\n9 path=../escaped\n\x00\x02".to_vec();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.user.blob", &value[..])]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(2);
    b.append_data(&mut h, "kept", &b"ok"[..]).unwrap();
    let (d, _) = context(&[]);
    std::fs::write(d.path().join("x.tar"), b.into_inner().unwrap()).unwrap();
    let mut p = add(&["x.tar"], "/a").run(&reopen(&d)).unwrap();
    assert_eq!(paths(&p), vec!["a", "a/kept"]);
    assert_eq!(entry(&p, "a/kept").xattrs, vec![Xattr { name: "user.blob".into(), value }]);
    assert_eq!(text(&mut p, "a/kept"), "ok");

    // Hostile archives fail with an error naming the archive, in bounded time.
    let mut hostile: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("path", &b"../../escaped"[..])]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(1);
    b.append_data(&mut h, "innocent", &b"x"[..]).unwrap();
    hostile.push(("pax-path.tar", b.into_inner().unwrap(), "points outside the destination"));
    // A PAX-encoded sparse file claiming 1 TiB.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("GNU.sparse.major", &b"1"[..]), ("GNU.sparse.minor", &b"0"[..]), ("GNU.sparse.realsize", &b"1099511627776"[..])]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(4);
    b.append_data(&mut h, "GNUSparseFile.0/big", &b"1\n0\n"[..]).unwrap();
    hostile.push(("sparse.tar", b.into_inner().unwrap(), "sparse files are not supported"));
    // Symlinks that point at each other, then a file through them.
    let mut b = tar::Builder::new(Vec::new());
    for (link, target) in [("a", "b"), ("b", "a")] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, link, target).unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_size(1);
    b.append_data(&mut h, "a/x", &b"x"[..]).unwrap();
    hostile.push(("loop.tar", b.into_inner().unwrap(), "symbolic links"));
    for (name, bytes, why) in hostile {
        let (d, _) = context(&[]);
        std::fs::write(d.path().join(name), bytes).unwrap();
        let started = std::time::Instant::now();
        let err = add(&[name], "/x").run(&reopen(&d)).map(|p| paths(&p)).unwrap_err().to_string();
        assert!(err.starts_with(&format!("ADD /{name}: ")) && err.contains(why), "{name}: {err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{name}");
    }
}

// ---------------------------------------------------------------- ADD: URLs

/// A one-shot-per-connection HTTP server on localhost serving `body` at any path.
fn serve(body: Vec<u8>, archive: Vec<u8>, last_modified: Option<&'static str>) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let req = String::from_utf8_lossy(&req).to_string();
            if req.starts_with("GET /stop") {
                return;
            }
            let (status, body) = if req.starts_with("GET /missing") {
                ("404 Not Found", Vec::new())
            } else if req.starts_with("GET /archive") {
                ("200 OK", archive.clone())
            } else {
                ("200 OK", body.clone())
            };
            let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            if let Some(lm) = last_modified {
                head.push_str(&format!("Last-Modified: {lm}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (format!("http://{addr}"), handle)
}

fn stop(base: &str, h: std::thread::JoinHandle<()>) {
    let _ = std::net::TcpStream::connect(base.trim_start_matches("http://")).and_then(|mut s| s.write_all(b"GET /stop HTTP/1.1\r\n\r\n"));
    h.join().unwrap();
}

#[test]
fn add_downloads_urls_with_checksum() {
    let body = b"downloaded bytes\n".to_vec();
    let (base, h) = serve(body.clone(), compress("gz", &tar_bytes()), Some("Sun, 06 Nov 1994 08:49:37 GMT"));
    let (_d, ctx) = context(&[]);
    let good = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    let url = format!("{base}/files/tool.sh?v=1");
    let mut p = Step { checksum: Some(good.clone()), ..add(&[&url], "/usr/bin/") }.run(&ctx).unwrap();
    let e = entry(&p, "usr/bin/tool.sh").clone();
    assert_eq!((e.mode, e.uid, e.mtime), (0o600, 0, 784111777), "0600, mtime from Last-Modified");
    assert_eq!(read(&mut p, "usr/bin/tool.sh"), body);
    let p2 = add(&[&url], "/usr/bin/renamed").run(&ctx).unwrap();
    assert_eq!(paths(&p2), vec!["usr", "usr/bin", "usr/bin/renamed"], "a dest without / names the file");
    let bad = format!("sha256:{}", "0".repeat(64));
    let err = Step { checksum: Some(bad.clone()), ..add(&[&url], "/x/") }.run(&ctx).err().unwrap();
    assert!(matches!(err, CopyError::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&bad) && err.to_string().contains(&good), "{err}");
    let err = add(&[&format!("{base}/missing")], "/x/").run(&ctx).err().unwrap();
    assert!(err.to_string().contains("404"), "{err}");
    // Remote archives stay archives unless --unpack=true.
    let tgz = format!("{base}/archive/pkg.tgz");
    assert_eq!(paths(&add(&[&tgz], "/dl/").run(&ctx).unwrap()), vec!["dl", "dl/pkg.tgz"]);
    let mut p = Step { unpack: Some(true), ..add(&[&tgz], "/dl/") }.run(&ctx).unwrap();
    assert!(paths(&p).contains(&"dl/pkg/bin/run".to_string()), "{:?}", paths(&p));
    assert_eq!(text(&mut p, "dl/pkg/again"), "run!\n");
    let p = Step { unpack: Some(true), ..add(&[&url], "/dl/") }.run(&ctx).unwrap();
    assert_eq!(paths(&p), vec!["dl", "dl/tool.sh"], "--unpack=true on a non-archive copies the file");
    stop(&base, h);
}

#[test]
fn url_and_checksum_flag_rules() {
    let (_d, ctx) = context(&[("a", "1")]);
    let err = copy(&["https://example.com/x"], "/x").run(&ctx).err().unwrap();
    assert!(err.to_string().contains("source can't be a URL for COPY"), "{err}");
    // The engine checks a git source out and plans it as a context; one reaching the planner is misplaced.
    let err = add(&["https://github.com/o/r.git"], "/x").run(&ctx).err().unwrap();
    assert!(err.to_string().contains("ADD's only source"), "{err}");
    let sum = format!("sha256:{}", "a".repeat(64));
    let err = Step { checksum: Some(sum.clone()), ..add(&["a"], "/x") }.run(&ctx).err().unwrap();
    assert!(err.to_string().contains("checksum requires HTTP(S) sources"), "{err}");
    let err = Step { checksum: Some(sum), ..copy(&["a"], "/x") }.run(&ctx).err().unwrap();
    assert!(err.to_string().contains("checksum can't be specified for COPY"), "{err}");
}
