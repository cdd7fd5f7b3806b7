//! COPY and ADD (from the context, another stage or an image), and the
//! context files of `RUN --mount=type=bind`, which are planned the same way.

use super::{Builder, StageState, StepCx};
use crate::engine::cache::CacheKey;
use crate::engine::context::BuildContext;
use crate::engine::copy::{self, CopyInput, CopySource};
use crate::engine::named_context::NamedContext;
use crate::engine::remote_context::{self, RemoteError};
use crate::engine::rootfs::LayerStack;
use crate::engine::BuildError;
use crate::dockerfile::expand::Scope;
use crate::dockerfile::instructions::InstructionKind;

impl Builder<'_> {
    /// Runs a COPY or ADD (or takes it from the cache); returns whether it was cached.
    pub(super) fn copy(&mut self, cx: &StepCx<'_>, scope: &Scope<'_, '_>, state: &mut StageState) -> Result<bool, BuildError> {
        let span = cx.instr.span;
        // ADD's own options, and COPY's.
        let (files, add, from, parents, checksum, unpack, keep_git_dir) = match &cx.instr.kind {
            InstructionKind::Copy(c) => (&c.files, false, c.from.as_deref(), c.parents, None, None, false),
            InstructionKind::Add(a) => (&a.files, true, None, false, a.checksum.as_deref(), a.unpack, a.keep_git_dir),
            _ => unreachable!("copy() is called for COPY and ADD"),
        };
        let inline: Vec<(String, String)> = files
            .heredocs
            .iter()
            .map(|doc| Ok((doc.name.clone(), scope.heredoc_content(doc, span)?)))
            .collect::<Result<_, crate::dockerfile::Error>>()
            .map_err(|e| e.in_file(&self.req.dockerfile))?;
        let owner = match &files.chown {
            Some(spec) => {
                let mut id = self.identity(state, spec).map_err(|e| self.at(cx, format!("--chown={spec}: {e}")))?;
                id.groups.clear();
                Some(id)
            }
            None => None,
        };
        // ADD <git URL> <dir>: the checkout's files, walked like a context (as BuildKit's git source, no .dockerignore).
        let git = match files.sources.iter().find(|s| add && remote_context::is_git(s)) {
            Some(url) if files.sources.len() > 1 => {
                return Err(self.at(cx, format!("ADD {url}: a git repository must be ADD's only source")));
            }
            Some(url) => {
                let fetched = remote_context::git_checkout(url, keep_git_dir, self.cancel).map_err(|e| match e {
                    RemoteError::Interrupted(i) => BuildError::from(i),
                    RemoteError::Failed(m) => self.at(cx, format!("ADD {m}")),
                })?;
                let checkout = BuildContext::open_unfiltered(&fetched.root)?;
                Some((fetched, checkout))
            }
            None => None,
        };
        let whole_checkout = [".".to_string()];
        let sources = if git.is_some() { &whole_checkout[..] } else { &files.sources[..] };
        // The source side: the context, a named context directory, another stage or an image.
        let named_dir = match from.and_then(|f| self.req.named_contexts.get(f)) {
            Some((name, NamedContext::Dir(dir))) => Some((name.to_string(), dir.clone())),
            _ => None,
        };
        let mut from_state = match from {
            Some(f) if named_dir.is_none() => Some(self.source_state(cx, f)?),
            _ => None,
        };
        if let Some(s) = from_state.as_mut() {
            self.stack(s)?;
        } else if let Some((name, dir)) = &named_dir {
            self.named_dir(name, dir)?;
        } else if git.is_none() {
            self.open_context()?;
        }
        self.stack(state)?;
        let workdir = if state.config.config.working_dir.is_empty() { "/".to_string() } else { state.config.config.working_dir.clone() };
        let empty_root = LayerStack::empty();
        // A --link layer may not depend on what is below it.
        let link = files.link;
        let dest_root = if link { &empty_root } else { state.stack.as_ref().expect("indexed above") };
        let input = CopyInput {
            owner,
            chmod: files.chmod.as_deref(),
            parents,
            exclude: &files.exclude,
            checksum,
            unpack,
            inline: &inline,
            cancel: self.cancel,
            ..CopyInput::new(add, sources, &files.dest, &workdir, dest_root)
        };
        let source = match (&from_state, &named_dir, &git) {
            (Some(s), _, _) => CopySource::Stack { stack: s.stack.as_ref().expect("indexed above"), store: self.store },
            (None, Some((name, _)), _) => CopySource::Context(&self.named_dirs[name]),
            (None, None, Some((_, checkout))) => CopySource::Context(checkout),
            (None, None, None) => CopySource::Context(self.context.as_ref().expect("opened above")),
        };
        let plan = copy::plan(&input, source).map_err(|e| self.at(cx, e.to_string()))?;
        // --link layers do not depend on what is below them.
        let parent = if link { None } else { Some(&state.key) };
        let key = CacheKey::derive(
            parent,
            &[if add { b"ADD" } else { b"COPY" }, plan.checksum.as_bytes(), cx.text.as_bytes(), workdir.as_bytes()],
        );
        let key = if link { CacheKey::derive(Some(&state.key), &[key.0.as_bytes()]) } else { key };
        if self.try_cache(&key, state)? {
            return Ok(true);
        }
        let (mut entries, mut contents) = (plan.entries, plan.contents);
        let layer = self.write(&mut entries, contents.as_mut())?;
        self.commit(key, state, layer, &format!("{} # buildkit", cx.text))?;
        Ok(false)
    }

    /// Plans the build context's files under `source` for a bind mount.
    pub(super) fn plan_context_bind(&mut self, cx: &StepCx<'_>, source: &str) -> Result<copy::CopyPlan, BuildError> {
        self.open_context()?;
        let sources = [source.to_string()];
        let empty = LayerStack::empty();
        let input = CopyInput::new(false, &sources, "/", "/", &empty);
        let context = CopySource::Context(self.context.as_ref().expect("opened above"));
        copy::plan(&input, context).map_err(|e| self.at(cx, format!("RUN --mount=type=bind,source={source}: {e}")))
    }

    /// Opens the build context (with its .dockerignore) on first use.
    fn open_context(&mut self) -> Result<(), BuildError> {
        if self.context.is_none() {
            self.context = Some(BuildContext::open(&self.req.context, Some(&self.req.dockerfile))?);
        }
        Ok(())
    }
}
