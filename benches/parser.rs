//! Parsing speed on a generated 10,000-instruction Dockerfile.
//!
//! Prints instructions per second for each phase and the ratio against a
//! reference measured in the same run: reading the same text and splitting
//! it into lines (the least any parser must do). Run: `cargo bench --bench parser`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use kiln::dockerfile::{expand, instructions, parser, stages};

const INSTRUCTIONS: usize = 10_000;

/// A realistic mix: multi-stage, ARG/ENV, continuations, JSON, mounts, heredocs.
fn generate() -> String {
    let mut s = String::from("# syntax=docker/dockerfile:1\nARG BASE=debian:bookworm\nARG VERSION=1.0\n");
    let mut n = 2;
    let mut stage = 0;
    while n < INSTRUCTIONS {
        if n % 500 == 2 {
            s.push_str(&format!("FROM --platform=$BUILDPLATFORM ${{BASE}} AS stage{stage}\nARG VERSION\n"));
            stage += 1;
            n += 2;
            continue;
        }
        let line = match n % 10 {
            0 => format!("RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \\\n    apt-get update && \\\n    apt-get install -y pkg{n} \\\n    && rm -rf /var/lib/apt/lists/*\n"),
            1 => format!("ENV PATH=/opt/bin{n}:$PATH APP_VERSION=${{VERSION}} HOME=/home/app\n"),
            2 => format!("COPY --chown=app:app --chmod=0644 src/file{n}.txt /app/data/\n"),
            3 => format!("LABEL org.opencontainers.image.version=\"$VERSION\" build.step=\"{n}\"\n"),
            4 => format!("WORKDIR /app/dir{n}\n"),
            5 => format!("RUN <<EOF\nset -e\necho step {n}\nEOF\n"),
            6 => "CMD [\"/app/bin/server\", \"--port\", \"8080\"]\n".to_string(),
            7 => format!("EXPOSE {}/tcp\n", 1000 + n % 5000),
            8 => format!("ARG OPT{n}=value{n}\n"),
            _ => format!("RUN echo \"instruction {n}\" > /tmp/out{n} # not a comment\n"),
        };
        s.push_str(&line);
        n += 1;
    }
    s
}

fn median(mut f: impl FnMut(), iters: usize) -> Duration {
    f(); // warm-up
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

fn main() {
    let text = generate();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("Dockerfile");
    std::fs::write(&path, &text).expect("write Dockerfile");
    let count = parser::parse(&text).expect("generated Dockerfile parses").nodes.len();
    let iters = 21;
    println!("Dockerfile: {count} instructions, {} lines, {} KiB", text.lines().count(), text.len() / 1024);

    let reference = median(
        || {
            let t = std::fs::read_to_string(&path).unwrap();
            black_box(t.lines().map(|l| l.to_string()).collect::<Vec<_>>());
        },
        iters,
    );
    let parse_only = median(
        || {
            let t = std::fs::read_to_string(&path).unwrap();
            black_box(parser::parse(&t).unwrap());
        },
        iters,
    );
    let typed = median(
        || {
            black_box(kiln::dockerfile::parse_file(&path).unwrap());
        },
        iters,
    );
    let df = instructions::parse(&text).unwrap();
    let opts = expand::BuildOptions::new("linux/arm64".parse().unwrap());
    let evaluated = median(
        || {
            let ev = expand::Evaluator::new(&df, &opts).unwrap();
            for stage in &df.stages {
                let mut scope = ev.scope(&[]);
                for i in &stage.instructions {
                    black_box(scope.expand(i).unwrap());
                }
            }
            black_box(stages::resolve(&ev, None).unwrap());
        },
        iters,
    );

    let rate = |d: Duration| count as f64 / d.as_secs_f64();
    println!("{:<44} {:>10} {:>16} {:>8}", "phase (median of 21)", "time", "instructions/s", "ratio");
    for (name, d) in [
        ("reference: read + split into lines", reference),
        ("read + parse (BuildKit AST)", parse_only),
        ("read + parse + typed instructions", typed),
        ("expand every stage + stage graph", evaluated),
    ] {
        println!(
            "{name:<44} {:>8.2}ms {:>16.0} {:>7.1}x",
            d.as_secs_f64() * 1e3,
            rate(d),
            d.as_secs_f64() / reference.as_secs_f64()
        );
    }
}
