//! Runs a Dockerfile for one platform: stages in dependency order, each
//! instruction as a step that either hits the cache or runs, producing an
//! image in the local store. The steps themselves live beside this file
//! (`run_step`: RUN in the VM; `copy_step`: COPY/ADD on the host); this file
//! schedules them and keeps a stage's state and the build cache.

mod copy_step;
mod labels;
mod run_step;
mod workdir_step;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kiln_protocol::LayerEntry;
use oci_spec::image::Descriptor;

use super::base_image::BaseImages;
use super::cache::{BuildCache, CacheEntry, CacheKey, CachedLayer};
use super::cache_exchange::{CacheRecord, ImportedCache, INLINE_CACHE_KEY};
use super::context::BuildContext;
use super::named_context::{NamedContext, NamedContexts};
use super::image_config::{rfc3339, History, ImageConfigFile};
use super::layer_tar::{write_layer, ContentSource, LayerOptions};
use super::progress::{Progress, StepEnd, StepLog};
use super::rootfs::LayerStack;
use super::users::{self, Identity};
use super::vm_session::{LayerRef, Sessions};
use super::BuildError;
use crate::dockerfile::expand::{BuildOptions, Evaluator, Scope};
use crate::dockerfile::instructions::InstructionKind;
use crate::dockerfile::stages::{self, BaseRef, SourceRef, StageGraph};
use crate::dockerfile::{Dockerfile, ErrorKind, Instruction, Span};
use crate::oci::layer::Compression;
use crate::oci::model::Image;
use crate::oci::store::Store;
use crate::platform::Platform;
use crate::registry::ClientOptions;

/// Everything a build is asked to do (the CLI maps buildx's flags onto this).
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub dockerfile: PathBuf,
    pub context: PathBuf,
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub platform: Platform,
    pub no_cache: bool,
    /// Always fetch base images from their registry.
    pub pull: bool,
    /// `--label`: added to the final image's labels.
    pub labels: BTreeMap<String, String>,
    /// `--network none`: no RUN step gets a network.
    pub network_none: bool,
    /// `--allow network.host`: `RUN --network=host` may run.
    pub allow_network_host: bool,
    /// `--allow security.insecure`: `RUN --security=insecure` may run.
    pub allow_insecure: bool,
    pub memory_mib: u64,
    pub cpus: u32,
    pub source_date_epoch: Option<i64>,
    pub compression: Compression,
    pub registry: ClientOptions,
    /// `--secret` values by id; only ever sent to the guest's memory.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// `--cache-from`: records consulted when the local cache misses.
    pub cache_from: Arc<ImportedCache>,
    /// `--cache-to type=inline`: the image's config carries its steps' cache records.
    pub inline_cache: bool,
    /// `--build-context`: what `FROM name`, `--from=name` read instead.
    pub named_contexts: NamedContexts,
    /// `--no-cache-filter`: stages whose steps never use the cache.
    pub no_cache_stages: Vec<String>,
    /// `--add-host`, `--shm-size`, `--ulimit`: given to every RUN.
    pub run_options: crate::engine::run_options::RunOptions,
}

/// What a finished build produced.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// The image manifest in the local store (not yet tagged).
    pub manifest: Descriptor,
    pub config_digest: String,
    pub steps: usize,
    pub cached: usize,
    /// Whether a VM was booted (a fully cached build boots none).
    pub vm_booted: bool,
    /// The image's platform, as its config names it (a `FROM --platform`
    /// stage may differ from the requested one).
    pub platform: crate::platform::Platform,
    /// The cache records of the image's own steps (`--cache-to mode=min`).
    pub image_records: Vec<CacheRecord>,
    /// The cache records of every step the build ran or found (`mode=max`).
    pub all_records: Vec<CacheRecord>,
}

/// A stage's state between steps.
#[derive(Clone)]
struct StageState {
    config: ImageConfigFile,
    layers: Vec<LayerRef>,
    key: CacheKey,
    /// Host-side view of the stage's files, built when a step needs it.
    stack: Option<LayerStack>,
    /// The cache records of the steps that made this state.
    records: Vec<CacheRecord>,
}

/// What a step works with besides its stage's state.
struct StepCx<'s> {
    df: &'s Dockerfile,
    /// The platform the stage runs on.
    platform: &'s Platform,
    /// The stages built so far (sources of `--from` and mounts).
    built: &'s HashMap<usize, StageState>,
    instr: &'s Instruction,
    /// The instruction as written: history, COPY's key, step name.
    text: &'s str,
    /// The step's progress id.
    step: usize,
}

pub struct Builder<'a> {
    store: &'a Store,
    cache: BuildCache,
    progress: StepLog,
    cancel: &'a AtomicBool,
    req: &'a BuildRequest,
    sessions: Sessions,
    bases: BaseImages,
    context: Option<BuildContext>,
    /// `--build-context` directories, opened on first use.
    named_dirs: HashMap<String, BuildContext>,
    /// The stage being built is in `--no-cache-filter`.
    stage_uncached: bool,
    steps: usize,
    cached: usize,
    /// Every step's cache record, in the order the steps ended.
    records: Vec<CacheRecord>,
}

/// A failure at `span` of the Dockerfile at `path` (free of the builder, so
/// a step can report one while it holds a part of the builder borrowed).
fn step_error(df: &Dockerfile, path: &std::path::Path, span: Span, message: impl Into<String>) -> BuildError {
    BuildError::Step(df.error_at(span, ErrorKind::Step(message.into())).in_file(path))
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl<'a> Builder<'a> {
    /// `progress` may be shared by builds of several platforms; with
    /// `prefix` (e.g. `linux/arm64 `) step names say which build they are.
    pub fn new(store: &'a Store, progress: Arc<Mutex<Progress>>, prefix: &str, cancel: &'a AtomicBool, req: &'a BuildRequest) -> Self {
        Builder {
            store,
            cache: BuildCache::for_store(store),
            progress: StepLog::new(progress, prefix),
            cancel,
            req,
            sessions: Sessions::new(req.memory_mib, req.cpus),
            bases: BaseImages::new(req.pull, req.registry.clone()),
            context: None,
            named_dirs: HashMap::new(),
            stage_uncached: false,
            steps: 0,
            cached: 0,
            records: Vec::new(),
        }
    }

    /// Builds the target stage and stores its config and manifest.
    pub fn build(mut self) -> Result<BuildOutcome, BuildError> {
        let df = crate::dockerfile::parse_file(&self.req.dockerfile)?;
        let mut opts = BuildOptions::new(self.req.platform.clone());
        opts.build_args = self.req.build_args.clone();
        let ev = Evaluator::new(&df, &opts).map_err(|e| e.in_file(&self.req.dockerfile))?;
        let graph = stages::resolve(&ev, self.req.target.as_deref()).map_err(|e| e.in_file(&self.req.dockerfile))?;
        let result = self.run_stages(&df, &ev, &graph);
        self.sessions.shutdown();
        let mut states = result?;
        let state = states.remove(&graph.target).expect("the target stage was built");
        let mut config = state.config;
        for (k, v) in &self.req.labels {
            config.config.labels.insert(k.clone(), v.clone());
        }
        if self.req.inline_cache {
            let records = serde_json::to_value(&state.records).expect("records serialise");
            config.other.insert(INLINE_CACHE_KEY.to_string(), records);
        }
        config.created = Some(self.created());
        let (manifest, config_digest) = super::manifest::write_image(self.store, &config, &state.layers)?;
        let vm_booted = self.sessions.booted();
        let platform = crate::platform::Platform { os: config.os, architecture: config.architecture, variant: config.variant };
        Ok(BuildOutcome {
            manifest,
            config_digest,
            steps: self.steps,
            cached: self.cached,
            vm_booted,
            platform,
            image_records: state.records,
            all_records: self.records,
        })
    }

    fn run_stages(&mut self, df: &Dockerfile, ev: &Evaluator<'_>, graph: &StageGraph) -> Result<HashMap<usize, StageState>, BuildError> {
        let mut built: HashMap<usize, StageState> = HashMap::new();
        let needed = self.needed_stages(df, graph);
        for name in &self.req.no_cache_stages {
            if !df.stages.iter().any(|s| s.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(name))) {
                self.progress.note(&format!("warning: --no-cache-filter {name}: the Dockerfile has no stage of that name"));
            }
        }
        for &index in graph.order.iter().filter(|i| needed.contains(i)) {
            let name = df.stages[index].name.as_deref();
            self.stage_uncached = name.is_some_and(|n| self.req.no_cache_stages.iter().any(|s| s.eq_ignore_ascii_case(n)));
            let state = self.run_stage(df, ev, graph, index, &built)?;
            built.insert(index, state);
        }
        Ok(built)
    }

    /// The stages the target needs once named contexts replace the stages
    /// of their name (a replaced stage's own sources are not built).
    fn needed_stages(&self, df: &Dockerfile, graph: &StageGraph) -> std::collections::HashSet<usize> {
        let mut needed = std::collections::HashSet::new();
        let mut todo = vec![graph.target];
        while let Some(i) = todo.pop() {
            if !needed.insert(i) || self.replaced_stage(df, i).is_some() {
                continue;
            }
            todo.extend(graph.stages[i].deps.iter().copied());
        }
        needed
    }

    /// The named context that replaces stage `index`, if one has its name.
    fn replaced_stage(&self, df: &Dockerfile, index: usize) -> Option<(String, NamedContext)> {
        let name = df.stages[index].name.as_deref()?;
        self.req.named_contexts.get(name).map(|(n, c)| (n.to_string(), c.clone()))
    }

    /// A failure at `cx`'s instruction.
    fn at(&self, cx: &StepCx<'_>, message: impl Into<String>) -> BuildError {
        self.at_span(cx.df, cx.instr.span, message)
    }

    fn at_span(&self, df: &Dockerfile, span: Span, message: impl Into<String>) -> BuildError {
        step_error(df, &self.req.dockerfile, span, message)
    }

    fn run_stage(
        &mut self,
        df: &Dockerfile,
        ev: &Evaluator<'_>,
        graph: &StageGraph,
        index: usize,
        built: &HashMap<usize, StageState>,
    ) -> Result<StageState, BuildError> {
        let stage = &df.stages[index];
        let node = &graph.stages[index];
        let platform = node.platform.clone().unwrap_or_else(|| self.req.platform.clone());
        let label = labels::stage_label(df, index);
        let total = labels::step_count(&stage.instructions);
        let from = format!("[{label}1/{total}] {}", labels::from_text(df, index, node));
        // A handle of its own, so resolving the base may borrow the builder.
        let progress = self.progress.clone();
        if let Some((name, context)) = self.replaced_stage(df, index) {
            // buildx: a named context of a stage's name is that stage.
            let step = format!("[{label}1/1] FROM {name} (--build-context)");
            return progress.step(&step, || self.named_state(&name, &context, &platform, df, stage.span));
        }
        let mut state = progress.step(&from, || self.stage_base(df, index, &node.base, &platform, built))?;

        // A new stage: CMD counts as set only once this stage sets it.
        state.config.config.cmd_set = false;
        // The base image's ONBUILD triggers run first, then are dropped.
        let triggers = std::mem::take(&mut state.config.config.on_build);
        let mut instructions: Vec<Instruction> = Vec::new();
        for trigger in &triggers {
            let instr = crate::dockerfile::instructions::parse_trigger(trigger, df.directives.escape)
                .map_err(|e| self.at_span(df, stage.span, format!("ONBUILD trigger of the base image: {e}")))?;
            instructions.push(Instruction { span: stage.span, ..instr });
        }
        instructions.extend(stage.instructions.iter().cloned());

        let env = state.config.config.env_pairs();
        let mut scope = ev.scope(&env);
        let total = labels::step_count(&instructions);
        let mut number = 1;
        for (n, instr) in instructions.iter().enumerate() {
            let expanded = scope.expand(instr).map_err(|e| e.in_file(&self.req.dockerfile))?;
            let text = if n < triggers.len() { triggers[n].clone() } else { labels::instruction_text(df, instr.span) };
            if labels::is_vertex(&instr.kind) {
                number += 1;
            }
            let name = format!("[{label}{number}/{total}] {text}");
            let cx = StepCx { df, platform: &platform, built, instr: &expanded, text: &text, step: 0 };
            self.step(cx, &mut scope, &mut state, &name)?;
        }
        Ok(state)
    }

    /// The state a stage starts from: nothing, an earlier stage or an image.
    fn stage_base(&mut self, df: &Dockerfile, index: usize, base: &BaseRef, platform: &Platform, built: &HashMap<usize, StageState>) -> Result<StageState, BuildError> {
        Ok(match base {
            BaseRef::Scratch => StageState {
                config: ImageConfigFile::scratch(platform),
                layers: Vec::new(),
                key: self.root_key(&format!("scratch {platform}")),
                stack: Some(LayerStack::empty()),
                records: Vec::new(),
            },
            BaseRef::Stage(i) => built.get(i).cloned().expect("stages are built in dependency order"),
            BaseRef::Image(name) => match self.req.named_contexts.get(name) {
                Some((name, context)) => {
                    let (name, context) = (name.to_string(), context.clone());
                    self.named_state(&name, &context, platform, df, df.stages[index].span)?
                }
                None => self.image_state(name, platform).map_err(|e| self.at_span(df, df.stages[index].span, e))?,
            },
        })
    }

    /// One instruction: metadata ones change the config; RUN, COPY, ADD and
    /// WORKDIR are steps of their own (cached or run).
    fn step(&mut self, mut cx: StepCx<'_>, scope: &mut Scope<'_, '_>, state: &mut StageState, name: &str) -> Result<(), BuildError> {
        crate::cancel::check(self.cancel)?;
        match &cx.instr.kind {
            InstructionKind::Arg(_) => return Ok(()),
            InstructionKind::Maintainer(m) => state.config.author = m.clone(),
            InstructionKind::Workdir(_) | InstructionKind::Run(_) | InstructionKind::Copy(_) | InstructionKind::Add(_) => {
                if let InstructionKind::Workdir(_) = &cx.instr.kind {
                    state.config.config.apply(&cx.instr.kind).map_err(|e| self.at(&cx, e))?;
                }
                cx.step = self.progress.start(name);
                let started = Instant::now();
                let result = match &cx.instr.kind {
                    InstructionKind::Run(run) => self.run(&cx, scope, state, run),
                    InstructionKind::Workdir(_) => self.workdir(&cx, state),
                    _ => self.copy(&cx, scope, state),
                };
                return self.finish(cx.step, started, result);
            }
            kind => {
                state.config.config.apply(kind).map_err(|e| self.at(&cx, e))?;
            }
        }
        state.config.history.push(History {
            created: Some(self.created()),
            created_by: cx.text.to_string(),
            comment: "buildkit.dockerfile.v0".into(),
            empty_layer: true,
            ..Default::default()
        });
        Ok(())
    }

    /// Ends a step's progress line; a step reports whether it was cached.
    fn finish(&mut self, step: usize, started: Instant, result: Result<bool, BuildError>) -> Result<(), BuildError> {
        self.steps += 1;
        let how = match &result {
            Ok(true) => {
                self.cached += 1;
                StepEnd::Cached
            }
            Ok(false) => StepEnd::Done,
            Err(e) => {
                self.progress.fail(step, &e.step_message(), started.elapsed());
                return result.map(|_| ());
            }
        };
        self.progress.end(step, how, started.elapsed());
        result.map(|_| ())
    }

    fn created(&self) -> String {
        rfc3339(self.req.source_date_epoch.unwrap_or_else(now_unix))
    }

    fn layer_options(&self) -> LayerOptions {
        LayerOptions { compression: self.req.compression, source_date_epoch: self.req.source_date_epoch }
    }

    /// Looks `key` up, in the local cache and then in `--cache-from`'s
    /// records; on a hit applies the cached result to `state`.
    fn try_cache(&mut self, key: &CacheKey, state: &mut StageState) -> Result<bool, BuildError> {
        if self.req.no_cache || self.stage_uncached {
            return Ok(false);
        }
        let entry = match self.cache.get(self.store, key) {
            Some(entry) => entry,
            None => match self.req.cache_from.fetch(self.store, key, self.cancel) {
                Ok(Some(entry)) => {
                    self.cache.put(key, &entry)?;
                    entry
                }
                Ok(None) => return Ok(false),
                Err(why) => {
                    self.progress.note(&format!("warning: --cache-from: {why}; running the step"));
                    return Ok(false);
                }
            },
        };
        self.record(state, key, &entry);
        let mut history = entry.history;
        if self.req.source_date_epoch.is_some() {
            history.created = Some(self.created());
        }
        let layer = entry.layer.map(|l| LayerRef { descriptor: l.descriptor, diff_id: l.diff_id });
        self.apply(state, key.clone(), layer, history)?;
        Ok(true)
    }

    /// Adds a step's result to the stage and records it in the cache.
    fn commit(&mut self, key: CacheKey, state: &mut StageState, layer: Option<LayerRef>, created_by: &str) -> Result<(), BuildError> {
        let history = History {
            created: Some(self.created()),
            created_by: created_by.to_string(),
            comment: "buildkit.dockerfile.v0".into(),
            empty_layer: layer.is_none(),
            ..Default::default()
        };
        let entry = CacheEntry {
            layer: layer.as_ref().map(|l| CachedLayer { descriptor: l.descriptor.clone(), diff_id: l.diff_id.clone() }),
            history: history.clone(),
        };
        self.cache.put(&key, &entry)?;
        self.record(state, &key, &entry);
        self.apply(state, key, layer, history)
    }

    /// Notes a step's cache record for `--cache-to`.
    fn record(&mut self, state: &mut StageState, key: &CacheKey, entry: &CacheEntry) {
        let record = CacheRecord { key: key.clone(), entry: entry.clone() };
        state.records.push(record.clone());
        self.records.push(record);
    }

    fn apply(&mut self, state: &mut StageState, key: CacheKey, layer: Option<LayerRef>, history: History) -> Result<(), BuildError> {
        if let Some(layer) = layer {
            state.config.rootfs.diff_ids.push(layer.diff_id.clone());
            if let Some(stack) = state.stack.as_mut() {
                stack.push(self.store, &layer.descriptor)?;
            }
            state.layers.push(layer);
        }
        state.config.history.push(history);
        state.key = key;
        Ok(())
    }

    /// The host-side view of the stage's files, indexed on first use.
    fn stack<'s>(&self, state: &'s mut StageState) -> Result<&'s LayerStack, BuildError> {
        if state.stack.is_none() {
            let descriptors: Vec<Descriptor> = state.layers.iter().map(|l| l.descriptor.clone()).collect();
            state.stack = Some(LayerStack::open(self.store, &descriptors)?);
        }
        Ok(state.stack.as_ref().expect("just set"))
    }

    /// The identity of `spec` (a USER or --chown value) in the stage's files.
    fn identity(&self, state: &mut StageState, spec: &str) -> Result<Identity, BuildError> {
        if spec.is_empty() || spec == "root" {
            return Ok(Identity::default());
        }
        let store = self.store;
        Ok(users::resolve_in(self.stack(state)?, store, spec)?)
    }

    fn write(&self, entries: &mut Vec<LayerEntry>, contents: &mut dyn ContentSource) -> Result<Option<LayerRef>, BuildError> {
        let layer = write_layer(self.store, entries, contents, &self.layer_options())?;
        Ok(layer.map(|l| LayerRef { descriptor: l.descriptor, diff_id: l.diff_id.to_string() }))
    }

    /// The files a `--from` names: a named context, an earlier stage, or an image.
    fn source_state(&mut self, cx: &StepCx<'_>, from: &str) -> Result<StageState, BuildError> {
        if let Some((name, context)) = self.req.named_contexts.get(from) {
            let (name, context) = (name.to_string(), context.clone());
            return self.named_state(&name, &context, cx.platform, cx.df, cx.instr.span);
        }
        match stages::source_ref(cx.df, from, cx.instr.span).map_err(|e| e.in_file(&self.req.dockerfile))? {
            SourceRef::Stage(i) => Ok(cx.built.get(&i).cloned().expect("sources are built first")),
            SourceRef::Image(name) => self.image_state(&name, cx.platform).map_err(|e| self.at(cx, e)),
        }
    }

    /// A stage's starting state from the base image `name`.
    fn image_state(&mut self, name: &str, platform: &Platform) -> Result<StageState, String> {
        let image = self.bases.resolve(self.store, &self.progress, name, platform, self.cancel)?;
        self.state_of_image(&image)
    }

    fn state_of_image(&self, image: &Image) -> Result<StageState, String> {
        let mut state = state_from_image(image)?;
        state.key = self.root_key(image.manifest_descriptor.digest().as_ref());
        Ok(state)
    }

    /// The `--build-context` directory `name`, opened with its own .dockerignore.
    pub(super) fn named_dir(&mut self, name: &str, dir: &std::path::Path) -> Result<&BuildContext, BuildError> {
        if !self.named_dirs.contains_key(name) {
            let context = BuildContext::open_named(dir)?;
            self.named_dirs.insert(name.to_string(), context);
        }
        Ok(&self.named_dirs[name])
    }

    /// The state the named context `name` stands for: an image's, or for a
    /// directory an image of its files alone (as BuildKit's local source).
    fn named_state(&mut self, name: &str, context: &NamedContext, platform: &Platform, df: &Dockerfile, span: Span) -> Result<StageState, BuildError> {
        let fail = |e: String| step_error(df, &self.req.dockerfile, span, format!("--build-context {name}: {e}"));
        match context {
            NamedContext::Image(reference) => self.image_state(reference, platform).map_err(fail),
            NamedContext::Remote(url) => Err(fail(format!("{url} was not fetched before the build"))),
            NamedContext::OciLayout { dir, select } => {
                let desc = crate::oci::layout::import_selected(self.store, dir, select).map_err(|e| fail(e.to_string()))?;
                let image = self.store.image(&desc, Some(platform)).map_err(|e| fail(e.to_string()))?;
                let image = super::base_image::check_platform(&dir.display().to_string(), image, platform).map_err(fail)?;
                self.state_of_image(&image).map_err(fail)
            }
            NamedContext::Dir(dir) => {
                let sources = [".".to_string()];
                let empty = LayerStack::empty();
                let input = super::copy::CopyInput { cancel: self.cancel, ..super::copy::CopyInput::new(false, &sources, "/", "/", &empty) };
                let plan = {
                    let context = self.named_dir(name, dir)?;
                    super::copy::plan(&input, super::copy::CopySource::Context(context))
                };
                let plan = plan.map_err(|e| fail(e.to_string()))?;
                let mut state = StageState {
                    config: ImageConfigFile::scratch(platform),
                    layers: Vec::new(),
                    key: self.root_key(&format!("scratch {platform}")),
                    stack: Some(LayerStack::empty()),
                    records: Vec::new(),
                };
                let key = CacheKey::derive(Some(&state.key), &[b"CONTEXT", plan.checksum.as_bytes()]);
                if !self.try_cache(&key, &mut state)? {
                    let (mut entries, mut contents) = (plan.entries, plan.contents);
                    let layer = self.write(&mut entries, contents.as_mut())?;
                    self.commit(key, &mut state, layer, &format!("context {name} # buildkit"))?;
                }
                Ok(state)
            }
        }
    }

    /// The key a stage starts from (`what`: its base image's digest, or
    /// `scratch` and the platform), with what shapes every layer's bytes
    /// beyond the steps themselves: SOURCE_DATE_EPOCH (mtimes are clamped
    /// to it) and the compression. Without them a layer made by a build
    /// without the epoch would be reused by one that must be reproducible.
    fn root_key(&self, what: &str) -> CacheKey {
        let (epoch, compression) = (self.req.source_date_epoch, self.req.compression);
        if epoch.is_none() && compression == Compression::default() {
            // The key older kilns gave these builds, so their caches stay valid.
            return CacheKey::root(what);
        }
        let shape = format!("SOURCE_DATE_EPOCH={epoch:?} compression={compression:?}");
        CacheKey::derive(None, &[what.as_bytes(), shape.as_bytes()])
    }
}

fn state_from_image(image: &Image) -> Result<StageState, String> {
    let mut config: ImageConfigFile = serde_json::from_slice(&image.config_bytes).map_err(|e| format!("the image config is not valid: {e}"))?;
    // A base image's inline cache describes the base's build, not this one.
    config.other.remove(INLINE_CACHE_KEY);
    let diff_ids = &config.rootfs.diff_ids;
    let layers = image.manifest.layers();
    if layers.len() != diff_ids.len() {
        return Err(format!("the image has {} layers but its config lists {} diff_ids", layers.len(), diff_ids.len()));
    }
    let layers = layers.iter().zip(diff_ids).map(|(d, id)| LayerRef { descriptor: d.clone(), diff_id: id.clone() }).collect();
    // The key is the builder's to set (Builder::root_key).
    Ok(StageState { key: CacheKey::root(image.manifest_descriptor.digest().as_ref()), config, layers, stack: None, records: Vec::new() })
}
