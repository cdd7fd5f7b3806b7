//! Base images for `FROM`, `COPY --from` and `RUN --mount=from=`: the local
//! store first (like the classic builder), the registry with `--pull` or
//! when the store lacks them, pulled on an async runtime started the first
//! time a pull is needed.

use std::sync::atomic::AtomicBool;

use crate::oci::model::Image;
use crate::oci::store::Store;
use crate::platform::Platform;
use crate::registry::{Client, ClientOptions, PullOptions, Reference};

use super::progress::StepLog;

pub struct BaseImages {
    /// `--pull`: always ask the registry.
    pull: bool,
    registry: ClientOptions,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BaseImages {
    pub fn new(pull: bool, registry: ClientOptions) -> Self {
        BaseImages { pull, registry, runtime: None }
    }

    /// Finds `name` for `platform`; a pull is shown as a step of its own.
    pub fn resolve(&mut self, store: &Store, progress: &StepLog, name: &str, platform: &Platform, cancel: &AtomicBool) -> Result<Image, String> {
        if !self.pull {
            if let Ok((_, desc)) = crate::registry::reference::resolve_local(store, name) {
                let image = store.image(&desc, Some(platform)).map_err(|e| format!("{name}: {e}"))?;
                return check_platform(name, image, platform);
            }
        }
        let reference = Reference::parse(name).map_err(|e| format!("{name}: {e}"))?;
        let client = Client::new(self.registry.clone()).map_err(|e| e.to_string())?;
        if self.runtime.is_none() {
            let runtime = crate::cancel::runtime();
            self.runtime = Some(runtime.map_err(|e| format!("starting the async runtime: {e}"))?);
        }
        let runtime = self.runtime.as_ref().expect("set above");
        let opts = PullOptions { platform: Some(platform.clone()), all_platforms: false };
        let report = progress
            .step_with_id(&format!("[internal] pulling {reference} ({platform})"), |id| {
                let client = client.with_observer(progress.transfers(id));
                crate::cancel::block_on(runtime, cancel, client.pull(store, &reference, &opts))
                    .map_err(|e| e.to_string())
                    .and_then(|pulled| pulled.map_err(|e| e.to_string()))
            })
            .map_err(|e| format!("{name}: not in the local store, and pulling it failed: {e}"))?;
        let image = store.image(&report.descriptor, Some(platform)).map_err(|e| format!("{name}: {e}"))?;
        check_platform(name, image, platform)
    }
}

pub(super) fn check_platform(name: &str, image: Image, want: &Platform) -> Result<Image, String> {
    let have = image.platform();
    if !crate::oci::model::platform_matches(want, &have) {
        return Err(format!(
            "{name} is a {have} image, not {want}: build with --platform {have}, or use a {want} base image"
        ));
    }
    Ok(image)
}
