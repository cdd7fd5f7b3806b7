//! A layer tar turned into an EROFS disk image, as kiln does with every
//! pulled layer on the host: hostile layers give an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiln::engine::erofs::from_tar(data, std::io::Cursor::new(Vec::new()));
});
