//! The cost of turning a layer tar into an EROFS image on the host
//! (`kiln::engine::erofs::from_tar`), next to unpacking the same tar with
//! GNU `tar -x` into a tmpfs, measured in the same run on the same files.
//! Both read the tar from and write into /dev/shm (a tempdir elsewhere), so
//! the disk is out of the picture. The image is checked with `fsck.erofs`
//! afterwards when erofs-utils is installed (not timed).
//!
//! Input: `KILN_EROFS_BENCH_TAR` (an uncompressed layer tar, e.g. a
//! gunzipped debian:bookworm layer), else a tar made here of
//! `KILN_EROFS_BENCH_DIR` (default /usr/lib/x86_64-linux-gnu).
//!
//! `KILN_EROFS_BENCH_KEEP=DIR` keeps the image there (e.g. to mount it and
//! `diff -r` it against `tar -x`).
//!
//! Run: `cargo bench --bench erofs`.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln::engine::erofs::from_tar;

const RUNS: usize = 3;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn mb_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64()
}

fn main() {
    let scratch = if Path::new("/dev/shm").is_dir() { tempfile::tempdir_in("/dev/shm") } else { tempfile::tempdir() }.unwrap();
    let tar: PathBuf = match std::env::var_os("KILN_EROFS_BENCH_TAR") {
        Some(t) => t.into(),
        None => {
            let dir = std::env::var("KILN_EROFS_BENCH_DIR").unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu".into());
            let tar = scratch.path().join("layer.tar");
            let (parent, name) = (Path::new(&dir).parent().unwrap(), Path::new(&dir).file_name().unwrap());
            let ok = Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(parent).arg(name).status().unwrap();
            assert!(ok.success() || tar.exists(), "tar -c {dir} failed");
            tar
        }
    };
    let size = fs::metadata(&tar).unwrap().len();
    let image = scratch.path().join("layer.erofs");
    let mut erofs_times = Vec::new();
    let mut summary = None;
    for _ in 0..RUNS {
        let _ = fs::remove_file(&image);
        let t = Instant::now();
        let input = BufReader::with_capacity(1 << 20, File::open(&tar).unwrap());
        let (out, s) = from_tar(input, File::create(&image).unwrap()).unwrap();
        out.sync_all().ok(); // tmpfs: no-op; elsewhere counts the write-back
        erofs_times.push(t.elapsed());
        summary = Some(s);
    }
    let mut untar_times = Vec::new();
    for i in 0..RUNS {
        let dest = scratch.path().join(format!("x{i}"));
        fs::create_dir(&dest).unwrap();
        let t = Instant::now();
        let ok = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&dest).status().unwrap();
        untar_times.push(t.elapsed());
        assert!(ok.success(), "tar -x failed");
        fs::remove_dir_all(&dest).unwrap();
    }
    let (e, u) = (median(erofs_times), median(untar_times));
    let summary = summary.unwrap();
    let image_size = fs::metadata(&image).unwrap().len();
    println!("layer tar: {:.1} MB, {} inodes -> EROFS image {:.1} MB", size as f64 / 1e6, summary.inodes, image_size as f64 / 1e6);
    println!("from_tar (tar -> erofs image): {:>8.1?}  {:>7.0} MB/s of tar", e, mb_s(size, e));
    println!("tar -x into tmpfs:             {:>8.1?}  {:>7.0} MB/s of tar", u, mb_s(size, u));
    if let Some(keep) = std::env::var_os("KILN_EROFS_BENCH_KEEP") {
        fs::copy(&image, Path::new(&keep).join("layer.erofs")).unwrap();
    }
    match Command::new("fsck.erofs").arg(&image).output() {
        Ok(out) if out.status.success() => println!("fsck.erofs: ok"),
        Ok(out) => panic!("fsck.erofs failed:\n{}", String::from_utf8_lossy(&out.stderr)),
        Err(_) => println!("fsck.erofs: not installed (apt-get install erofs-utils), image not checked"),
    }
}
