//! The tar reader every part of kiln uses (host import, ADD, EROFS
//! conversion; the guest's layer unpack): any bytes give members or an
//! error, never a panic, with memory bounded by MAX_META.
#![no_main]
use std::io::Read;

use kiln_protocol::tar_read::TarReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = TarReader::new(data);
    let mut buf = [0u8; 4096];
    for _ in 0..10_000 {
        match reader.next_member() {
            Ok(Some(m)) => {
                // Read some of the data, as unpack does, and let the rest be skipped.
                if m.size % 2 == 0 {
                    while let Ok(n) = reader.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                    }
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
});
