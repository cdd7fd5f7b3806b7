//! Manifests, indexes and image configs as a registry or a layout hands
//! them to kiln: parsed, walked and matched against a platform.
#![no_main]
use kiln::oci::model::{config_platform, select_platform, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hint = match data.first() {
        Some(b) if b % 3 == 0 => Some("application/vnd.oci.image.index.v1+json"),
        Some(b) if b % 3 == 1 => Some("application/vnd.docker.distribution.manifest.v2+json"),
        _ => None,
    };
    if let Ok(manifest) = Manifest::parse(data, hint, "fuzz") {
        let _ = manifest.children();
        if let Manifest::Index(index) = &manifest {
            let _ = select_platform(index, &"linux/arm64".parse().unwrap(), "fuzz");
        }
    }
    if let Ok(config) = serde_json::from_slice::<oci_spec::image::ImageConfiguration>(data) {
        let _ = config_platform(&config).to_string();
    }
});
