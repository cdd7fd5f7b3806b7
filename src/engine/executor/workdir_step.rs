//! WORKDIR: the directories it names that the stage lacks, created (owned
//! by the stage's USER) as a layer of their own, as BuildKit does.

use kiln_protocol::{EntryKind, LayerEntry};

use super::{now_unix, Builder, StageState, StepCx};
use crate::engine::cache::CacheKey;
use crate::engine::layer_tar::NoContent;
use crate::engine::users::Identity;
use crate::engine::BuildError;

impl Builder<'_> {
    /// Creates the WORKDIR (or takes it from the cache); returns whether it was cached.
    pub(super) fn workdir(&mut self, cx: &StepCx<'_>, state: &mut StageState) -> Result<bool, BuildError> {
        let dir = state.config.config.working_dir.clone();
        let owner = if state.config.config.user.is_empty() {
            Identity::default()
        } else {
            let spec = state.config.config.user.clone();
            self.identity(state, &spec).map_err(|e| self.at(cx, e.to_string()))?
        };
        let key = CacheKey::derive(Some(&state.key), &[b"WORKDIR", dir.as_bytes(), format!("{}:{}", owner.uid, owner.gid).as_bytes()]);
        if self.try_cache(&key, state)? {
            return Ok(true);
        }
        let stack = self.stack(state)?;
        let resolved = stack.resolve(dir.trim_start_matches('/'))?;
        let mut entries = Vec::new();
        let mut path = String::new();
        for part in resolved.split('/').filter(|p| !p.is_empty()) {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            match stack.entry(&path) {
                Some(LayerEntry { kind: EntryKind::Dir { .. }, .. }) => {}
                Some(_) => return Err(self.at(cx, format!("WORKDIR {dir}: /{path} exists and is not a directory"))),
                None => entries.push(LayerEntry {
                    path: path.clone(),
                    kind: EntryKind::Dir { opaque: false },
                    mode: 0o755,
                    uid: owner.uid,
                    gid: owner.gid,
                    mtime: self.req.source_date_epoch.unwrap_or_else(now_unix),
                    mtime_nsec: 0,
                    xattrs: Vec::new(),
                }),
            }
        }
        let layer = self.write(&mut entries, &mut NoContent)?;
        self.commit(key, state, layer, cx.text)?;
        Ok(false)
    }
}
