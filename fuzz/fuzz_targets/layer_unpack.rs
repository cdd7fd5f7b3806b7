//! The guest agent's layer unpack (`kiln_protocol::layer_unpack`), on the
//! host, into a fresh directory per input: any bytes unpack or fail with an
//! error, never a panic, and nothing is ever made outside that directory.
//! It runs as root in the guest; run this as root too, so that owners,
//! device nodes and trusted xattrs take the same paths.
#![no_main]
use kiln_protocol::layer_unpack::unpack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = tempfile::tempdir().expect("a temp dir");
    let dest = base.path().join("root");
    std::fs::create_dir(&dest).expect("the unpack root");
    let _ = unpack(&mut &data[..], &dest);
    // A member that escaped its root would most likely land beside it.
    let beside: Vec<_> = std::fs::read_dir(base.path()).expect("the temp dir").map(|e| e.expect("an entry").file_name()).collect();
    assert_eq!(beside, [std::ffi::OsString::from("root")], "unpack made something outside its root");
});
