//! RUN snapshot speed: writing a gzip layer from an ext4 scratch image.
//!
//! Builds a deterministic tree of 20,000 files (about 500 MB, mixed sizes,
//! text-like content that gzip -6 shrinks to about 37%), packs it into an
//! ext4 image with `mke2fs -d`, builds the manifest by walking the host tree,
//! then times in the same run:
//!
//! - ext4-view's read path alone (small files, big files) next to reading the
//!   same files from the host file system;
//! - `write_layer(Ext4Contents)` uncompressed and gzip;
//! - `tar -c DIR | gzip -6` and `tar -c DIR | pigz` (when installed) as references.
//!
//! Every run reads warm page caches. Wall time shows parallelism; CPU time
//! (getrusage) is the figure to trust when other work shares the machine.
//! Run: `cargo bench --bench snapshot`
//! (needs e2fsprogs, GNU tar, gzip; pigz optional). Everything lives in one
//! temp dir, removed at the end.

// The bench reads Unix file metadata and getrusage; elsewhere it only says so.
fn main() {
    #[cfg(unix)]
    bench::main();
    #[cfg(not(unix))]
    eprintln!("the snapshot bench needs a Unix host");
}

#[cfg(unix)]
mod bench {
    use std::io::{self, Read};
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use kiln::engine::layer_tar::{write_layer, ContentSource, LayerOptions};
    use kiln::engine::snapshot::Ext4Contents;
    use kiln::engine::{EntryKind, LayerEntry};
    use kiln::oci::{Compression, Store};

    const FILES: usize = 20_000;
    const SMALL_LIMIT: u64 = 64 * 1024;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// 8 MiB of text-like bytes: words from a small vocabulary with some noise.
    fn corpus() -> Vec<u8> {
        const WORDS: &[&str] = &[
            "the", "layer", "kiln", "image", "build", "file", "system", "return", "int", "void", "static", "const",
            "struct", "if", "else", "for", "while", "0x1f", "error", "value", "config", "usr", "lib", "share", "doc",
            "debian", "package", "version", "1.2.3", "amd64", "arm64", "license", "copyright", "function", "{", "}",
        ];
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        let mut out = Vec::with_capacity(8 << 20);
        while out.len() < 8 << 20 {
            let x = r.next();
            if x % 9 == 0 {
                out.extend_from_slice(&x.to_le_bytes());
            } else {
                out.extend_from_slice(WORDS[(x >> 8) as usize % WORDS.len()].as_bytes());
                out.push(if x % 7 == 0 { b'\n' } else { b' ' });
            }
        }
        out
    }

    /// File sizes: many small, some medium, a few big; about 500 MB in all.
    fn size_of(i: usize, r: &mut Rng) -> usize {
        if i % 1000 == 0 {
            8 << 20
        } else if i % 50 == 0 {
            512 * 1024 + (r.next() % (576 * 1024)) as usize
        } else {
            (r.next() % 4700) as usize
        }
    }

    fn make_tree(root: &Path) -> (u64, usize) {
        let corpus = corpus();
        let mut r = Rng(42);
        let mut total = 0u64;
        for i in 0..FILES {
            let dir = root.join(format!("d{:02}/s{}", i / 1000, (i / 100) % 10));
            if i % 100 == 0 {
                std::fs::create_dir_all(&dir).unwrap();
            }
            let size = size_of(i, &mut r);
            let start = (r.next() as usize) % (corpus.len() - size.min(corpus.len() - 1));
            let mut data = corpus[start..start + size.min(corpus.len() - start)].to_vec();
            data.resize(size, b'x');
            std::fs::write(dir.join(format!("f{i:05}")), &data).unwrap();
            total += size as u64;
        }
        (total, FILES)
    }

    /// The manifest the agent would report for `root` as an upper dir.
    fn manifest(root: &Path) -> Vec<LayerEntry> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let p = entry.unwrap().path();
                let m = p.symlink_metadata().unwrap();
                let kind = if m.is_dir() {
                    todo.push(p.clone());
                    EntryKind::Dir { opaque: false }
                } else {
                    EntryKind::File { size: m.len(), link: None }
                };
                out.push(LayerEntry {
                    path: p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: m.mtime(),
                    mtime_nsec: m.mtime_nsec() as u32,
                    xattrs: vec![],
                });
            }
        }
        out
    }

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn has(bin: &str) -> bool {
        Command::new("sh").arg("-c").arg(format!("command -v {bin}")).output().is_ok_and(|o| o.status.success())
    }

    fn timed(f: impl FnOnce()) -> Duration {
        let t = Instant::now();
        f();
        t.elapsed()
    }

    /// User + system CPU time of this process (all threads) or of its waited-for children.
    fn cpu_time(who: libc::c_int) -> Duration {
        // SAFETY: getrusage writes into the zeroed struct we pass; no other memory is touched.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut u) };
        let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
        tv(u.ru_utime) + tv(u.ru_stime)
    }

    /// Wall time and CPU time (of `who`) spent in `f`.
    fn measured(who: libc::c_int, f: impl FnOnce()) -> (Duration, Duration) {
        let c = cpu_time(who);
        let wall = timed(f);
        (wall, cpu_time(who) - c)
    }

    fn mbps(bytes: u64, d: Duration) -> f64 {
        bytes as f64 / 1e6 / d.as_secs_f64()
    }

    /// Reads every file entry matching `pick` through `src`; returns bytes read.
    fn read_all(src: &mut dyn ContentSource, entries: &[LayerEntry], pick: impl Fn(u64) -> bool) -> u64 {
        let mut buf = vec![0u8; 1 << 17];
        let mut total = 0;
        for e in entries {
            if let EntryKind::File { size, .. } = e.kind {
                if pick(size) {
                    let mut r = src.open(e).unwrap();
                    loop {
                        let n = r.read(&mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                }
            }
        }
        total
    }

    /// The host tree as a content source: the reference for ext4-view's reads.
    struct HostFiles(PathBuf);

    impl ContentSource for HostFiles {
        fn open(&mut self, entry: &LayerEntry) -> io::Result<Box<dyn Read + '_>> {
            Ok(Box::new(std::fs::File::open(self.0.join(&entry.path))?))
        }
    }

    /// Other work on the machine skews every figure; the load says how much.
    fn load() -> String {
        std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
    }

    pub fn main() {
        println!("load average at start: {}", load());
        if !has("mke2fs") && !Path::new("/usr/sbin/mke2fs").exists() {
            eprintln!("snapshot bench: mke2fs is missing (Debian package e2fsprogs)");
            std::process::exit(1);
        }
        let work = tempfile::tempdir().expect("temp dir");
        let tree = work.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        let t = Instant::now();
        let (data_bytes, files) = make_tree(&tree);
        println!("tree: {files} files, {:.1} MB of file data (made in {:.1?})", data_bytes as f64 / 1e6, t.elapsed());

        let img = work.path().join("scratch.img");
        let size_mb = data_bytes / 1_000_000 * 13 / 10 + 256;
        let t = Instant::now();
        let mke2fs = if has("mke2fs") { "mke2fs".to_string() } else { "/usr/sbin/mke2fs".to_string() };
        run(Command::new(&mke2fs).args(["-q", "-F", "-t", "ext4", "-N", "40000", "-d"]).arg(&tree).arg(&img).arg(format!("{size_mb}M")));
        println!("ext4 image: mke2fs -d in {:.1?}", t.elapsed());

        let entries = manifest(&tree);
        let small = |s: u64| s < SMALL_LIMIT;
        let big = |s: u64| s >= SMALL_LIMIT;
        let n_small = entries.iter().filter(|e| matches!(e.kind, EntryKind::File { size, .. } if size < SMALL_LIMIT)).count();

        println!("\nread path (warm caches)          MB/s      files/s");
        for (label, pick, count) in [("small files (<64 KiB)", &small as &dyn Fn(u64) -> bool, n_small), ("big files", &big, files - n_small)] {
            let mut ext4 = Ext4Contents::open(&img, "/").unwrap();
            let mut bytes = 0;
            let d_ext4 = timed(|| bytes = read_all(&mut ext4, &entries, pick));
            let mut host = HostFiles(tree.clone());
            let d_host = timed(|| {
                read_all(&mut host, &entries, pick);
            });
            println!(
                "  {label:<22} ext4-view {:>8.0} {:>10.0}   host fs {:>8.0} {:>10.0}",
                mbps(bytes, d_ext4),
                count as f64 / d_ext4.as_secs_f64(),
                mbps(bytes, d_host),
                count as f64 / d_host.as_secs_f64()
            );
        }

        let store = Store::open(work.path().join("store")).unwrap();
        // (label, wall, cpu, output bytes)
        let mut rows: Vec<(String, Duration, Duration, Option<u64>)> = Vec::new();
        for compression in [Compression::None, Compression::Gzip] {
            let mut src = Ext4Contents::open(&img, "/").unwrap();
            let mut list = entries.clone();
            let mut layer = None;
            let (wall, cpu) = measured(libc::RUSAGE_SELF, || {
                layer = write_layer(&store, &mut list, &mut src, &LayerOptions { compression, source_date_epoch: None }).unwrap();
            });
            let layer = layer.unwrap();
            rows.push((format!("kiln write_layer(Ext4Contents) {compression:?}"), wall, cpu, Some(layer.descriptor.size())));
        }
        let reference = |pipe: &str| -> (Duration, Duration, u64) {
            let out = work.path().join("ref.out");
            let script = format!("tar -c -C '{}' . | {pipe} > '{}'", tree.display(), out.display());
            let (wall, cpu) = measured(libc::RUSAGE_CHILDREN, || run(Command::new("sh").arg("-c").arg(&script)));
            let size = std::fs::metadata(&out).unwrap().len();
            std::fs::remove_file(&out).unwrap();
            (wall, cpu, size)
        };
        let (wall, cpu, s) = reference("gzip -6");
        rows.push(("tar -c DIR | gzip -6".into(), wall, cpu, Some(s)));
        let (gzip_wall, gzip_cpu) = (wall, cpu);
        let pigz = has("pigz");
        if pigz {
            let (wall, cpu, s) = reference("pigz -6");
            rows.push(("tar -c DIR | pigz -6".into(), wall, cpu, Some(s)));
        }
        let (wall, cpu, _) = reference("cat");
        rows.push(("tar -c DIR (no compression)".into(), wall, cpu, None));

        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        println!(
            "\nlayer of {:.1} MB file data, {threads} cores      wall s  wall MB/s   CPU s  MB/CPU-s  out MB  vs gzip -6: wall  CPU",
            data_bytes as f64 / 1e6
        );
        for (label, wall, cpu, out) in &rows {
            println!(
                "  {label:<38} {:>7.2} {:>9.1} {:>7.2} {:>8.1} {:>7} {:>14.2}x {:>5.2}x",
                wall.as_secs_f64(),
                mbps(data_bytes, *wall),
                cpu.as_secs_f64(),
                mbps(data_bytes, *cpu),
                out.map(|o| format!("{:.1}", o as f64 / 1e6)).unwrap_or_else(|| "-".into()),
                gzip_wall.as_secs_f64() / wall.as_secs_f64(),
                gzip_cpu.as_secs_f64() / cpu.as_secs_f64(),
            );
        }
        if !pigz {
            println!("  (pigz not installed: no pigz reference)");
        }
        let kiln_gz = rows.iter().find(|r| r.0.ends_with("Gzip")).map(|r| (r.1, r.2));
        let pigz_row = rows.iter().find(|r| r.0.contains("pigz")).map(|r| (r.1, r.2));
        if let (Some((kw, kc)), Some((pw, pc))) = (kiln_gz, pigz_row) {
            println!(
                "  kiln gzip vs tar|pigz: {:.2}x the wall-clock speed, {:.2}x the CPU efficiency",
                pw.as_secs_f64() / kw.as_secs_f64(),
                pc.as_secs_f64() / kc.as_secs_f64()
            );
        }
        println!("load average at end: {}", load());
        drop(store);
        work.close().expect("removing the bench's temp dir");
    }
}
