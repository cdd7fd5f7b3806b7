//! COPY planning and layer writing on a generated build context (4,000
//! files in 200 directories, 100 MiB, a .dockerignore), against references
//! measured in the same run on the same files:
//! - plan (walk, .dockerignore, sha256 of every byte) vs `tar -c | sha256sum`;
//! - plan + gzip layer write vs `tar -c | gzip -6`.
//!
//! Run: `cargo bench --bench copy`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln::engine::context::BuildContext;
use kiln::engine::copy::{self, CopyInput, CopySource};
use kiln::engine::layer_tar::{write_layer, LayerOptions};
use kiln::engine::rootfs::LayerStack;
use kiln::oci::store::Store;

const DIRS: usize = 200;
const FILES_PER_DIR: usize = 20;
const FILE_SIZE: usize = 25 * 1024 + 512;
const WORDS: [&str; 16] =
    ["fn ", "let ", "match ", "self.", "return ", "impl ", "pub ", "struct ", "=> ", "{ ", "} ", "( ", ") ", "Ok", "Err", "&mut "];

fn median(mut f: impl FnMut(), iters: usize) -> Duration {
    f(); // warm-up: the page cache holds the files for every run
    let mut times: Vec<Duration> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[iters / 2]
}

fn shell(cmd: &str, dir: &std::path::Path) {
    let ok = Command::new("sh").arg("-c").arg(cmd).current_dir(dir).stdout(Stdio::null()).status().expect("sh").success();
    assert!(ok, "{cmd} failed");
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctx_dir = dir.path().join("ctx");
    // Deterministic text (an LCG picks the words).
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut bytes = 0usize;
    for d in 0..DIRS {
        let sub = ctx_dir.join(format!("pkg{d:03}/src"));
        std::fs::create_dir_all(&sub).expect("mkdir");
        for f in 0..FILES_PER_DIR {
            let mut data = Vec::with_capacity(FILE_SIZE);
            while data.len() < FILE_SIZE {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                // Words from a small vocabulary plus a number: compresses about 3:1 like source code.
                let word = WORDS[(x >> 40) as usize % WORDS.len()];
                data.extend_from_slice(word.as_bytes());
                data.extend_from_slice(format!("{} ", (x >> 20) % 1000).as_bytes());
                if x % 7 == 0 {
                    data.push(b'\n');
                }
            }
            data.truncate(FILE_SIZE);
            bytes += data.len();
            std::fs::write(sub.join(format!("file{f:02}.rs")), &data).expect("write");
        }
    }
    std::fs::write(ctx_dir.join(".dockerignore"), "**/*.tmp\n.git\n").expect("write");
    let store = Store::open(dir.path().join("store")).expect("store");
    let ctx = BuildContext::open(&ctx_dir, None).expect("context");
    let dest_root = LayerStack::empty();
    let sources = vec![".".to_string()];
    let input = CopyInput::new(false, &sources, "/app/", "/", &dest_root);
    let files = DIRS * FILES_PER_DIR;
    let mb = bytes as f64 / (1024.0 * 1024.0);
    println!("context: {files} files, {mb:.0} MiB");

    let plan = median(|| drop(copy::plan(&input, CopySource::Context(&ctx)).expect("plan")), 5);
    let tar_hash = median(|| shell("tar -cf - . | sha256sum", &ctx_dir), 5);
    println!(
        "plan (walk + sha256):        {:8.1} ms  {:7.0} MiB/s   tar -c | sha256sum: {:8.1} ms   ratio {:.2}",
        plan.as_secs_f64() * 1e3,
        mb / plan.as_secs_f64(),
        tar_hash.as_secs_f64() * 1e3,
        plan.as_secs_f64() / tar_hash.as_secs_f64()
    );

    let write = median(
        || {
            let mut p = copy::plan(&input, CopySource::Context(&ctx)).expect("plan");
            write_layer(&store, &mut p.entries, p.contents.as_mut(), &LayerOptions::default()).expect("layer");
        },
        3,
    );
    let tar_gzip = median(|| shell("tar -cf - . | gzip -6", &ctx_dir), 3);
    println!(
        "plan + gzip layer:           {:8.1} ms  {:7.0} MiB/s   tar -c | gzip -6:   {:8.1} ms   ratio {:.2}",
        write.as_secs_f64() * 1e3,
        mb / write.as_secs_f64(),
        tar_gzip.as_secs_f64() * 1e3,
        write.as_secs_f64() / tar_gzip.as_secs_f64()
    );
}
