//! Boot-to-agent-ready and trivial-exec times, next to a reference run of the
//! bare kernel booting the same initramfs straight to power-off, and the
//! time to restore a boot snapshot (what build VMs do under TCG).
//!
//! `cargo bench --bench vm_boot` (KILN_BENCH_RUNS=N, default 5; needs what
//! scripts/test.sh prepares). Prints medians and the ratio kiln / reference.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use kiln::platform::Platform;
use kiln::vm::arch::Accel;
use kiln::vm::transport::TransportChoice;
use kiln::vm::{reference_boot, Vm, VmConfig};
use kiln_protocol::ExecRequest;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::var("KILN_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let cancel = AtomicBool::new(false);
    println!("{:<13} {:<5} {:<7} {:>10} {:>10} {:>8} {:>10}", "platform", "accel", "transport", "reference", "ready", "ratio", "exec");
    let cases: &[(&str, Option<&str>, TransportChoice)] = &[
        ("linux/arm64", None, TransportChoice::Serial),
        ("linux/arm64", None, TransportChoice::Vsock),
        ("linux/amd64", None, TransportChoice::Serial),
        ("linux/amd64", Some("tcg"), TransportChoice::Serial),
        ("linux/arm/v7", None, TransportChoice::Serial),
        ("linux/arm/v7", None, TransportChoice::Vsock),
        ("linux/riscv64", None, TransportChoice::Serial),
        ("linux/ppc64le", None, TransportChoice::Serial),
        ("linux/s390x", None, TransportChoice::Serial),
    ];
    for &(platform, force_accel, transport) in cases {
        boot_case(platform, force_accel, transport, runs, &cancel);
    }
    // Restoring a boot snapshot (build VMs: scratch disk, network, layer
    // slots). The first boot saves the snapshot; the median is of restores.
    // (riscv64 and ppc64le guests are not restored: GuestArch::restores_from_snapshots.)
    for platform in ["linux/arm64", "linux/arm/v7", "linux/s390x"] {
        snapshot_case(platform, runs, &cancel);
    }
}

fn snapshot_case(platform: &str, runs: usize, cancel: &AtomicBool) {
    let platform: Platform = platform.parse().unwrap();
    let mut config = VmConfig::new(platform.clone());
    config.accel = Some(Accel::Tcg);
    config.transport = TransportChoice::Auto;
    let Ok(files) = kiln::vm::boot_files(&platform, None) else { return };
    let boot = |cancel| {
        let vm = Vm::boot(&config, &files, cancel).expect("boot");
        let t = vm.boot_time;
        vm.shutdown();
        t
    };
    let first = boot(cancel);
    let restores: Vec<Duration> = (0..runs).map(|_| boot(cancel)).collect();
    println!(
        "{:<13} {:<5} {:<7} {:>10} {:>9.2}s {:>8} {:>10}   (boot snapshot restores; this run's first boot, which saves one if missing: {:.2}s)",
        platform.to_string(),
        "tcg",
        "serial",
        "-",
        median(restores).as_secs_f64(),
        "-",
        "-",
        first.as_secs_f64()
    );
}

fn boot_case(platform: &str, force_accel: Option<&str>, transport: TransportChoice, runs: usize, cancel: &AtomicBool) {
    {
        let platform: Platform = platform.parse().unwrap();
        let mut config = VmConfig::new(platform.clone());
        config.accel = force_accel.map(|a| a.parse().unwrap());
        config.transport = transport;
        config.memory_mib = 1024;
        config.scratch = false;
        config.network = false;
        let files = match kiln::vm::boot_files(&platform, None) {
            Ok(files) => files,
            Err(e) => {
                println!("{platform}: skipped: {e}");
                return;
            }
        };
        let (mut reference, mut ready, mut exec) = (Vec::new(), Vec::new(), Vec::new());
        let mut accel = Accel::Tcg;
        let mut used = None;
        for _ in 0..runs {
            reference.push(reference_boot(&config, &files).expect("reference boot"));
            let mut vm = Vm::boot(&config, &files, cancel).expect("boot");
            accel = vm.accel;
            used = Some(vm.transport);
            ready.push(vm.boot_time);
            let req = ExecRequest { argv: vec!["/init".into(), "--version".into()], ..Default::default() };
            let started = Instant::now();
            vm.exec(req, None, &mut |_, _| {}, cancel).expect("exec");
            exec.push(started.elapsed());
            vm.shutdown();
        }
        let (r, b, e) = (median(reference), median(ready), median(exec));
        println!(
            "{:<13} {:<5} {:<7} {:>9.2}s {:>9.2}s {:>7.2}x {:>8.1}ms",
            platform.to_string(),
            accel.name(),
            format!("{:?}", used.unwrap()).to_lowercase(),
            r.as_secs_f64(),
            b.as_secs_f64(),
            b.as_secs_f64() / r.as_secs_f64(),
            e.as_secs_f64() * 1000.0
        );
    }
}
