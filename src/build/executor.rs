//! Runs a Dockerfile for one platform: stages in dependency order, each
//! instruction as a step that either hits the cache or runs (RUN in the VM,
//! COPY/ADD/WORKDIR on the host), producing an image in the local store.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kiln_protocol::{EntryKind, LayerEntry, MountSpec};
use oci_spec::image::{Descriptor, MediaType};

use super::cache::{BuildCache, CacheEntry, CacheKey, CachedLayer};
use super::context::BuildContext;
use super::copy::{self, CopyInput, CopySource};
use super::image_config::{rfc3339, History, ImageConfigFile};
use super::layer_tar::{write_layer, ContentSource, LayerOptions};
use super::progress::{Progress, StepEnd};
use super::rootfs::LayerStack;
use super::run_mounts;
use super::snapshot::Ext4Contents;
use super::users::{self, Identity};
use super::vm_session::{LayerRef, RunSpec, Session};
use super::BuildError;
use crate::dockerfile::expand::{BuildOptions, Evaluator, Scope};
use crate::dockerfile::instructions::{InstructionKind, Network};
use crate::dockerfile::mount::MountType;
use crate::dockerfile::stages::{self, BaseRef, SourceRef, StageGraph};
use crate::dockerfile::{Dockerfile, ErrorKind, Instruction, ShellOrExec, Span};
use crate::oci::layer::Compression;
use crate::oci::media;
use crate::oci::model::Image;
use crate::oci::store::Store;
use crate::platform::Platform;
use crate::registry::{Client, ClientOptions, PullOptions, Reference};
use crate::vm::VmConfig;

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
    pub memory_mib: u64,
    pub cpus: u32,
    pub source_date_epoch: Option<i64>,
    pub compression: Compression,
    pub registry: ClientOptions,
    /// `--secret` values by id; only ever sent to the guest's memory.
    pub secrets: BTreeMap<String, Vec<u8>>,
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
}

/// A stage's state between steps.
#[derive(Clone)]
struct StageState {
    config: ImageConfigFile,
    layers: Vec<LayerRef>,
    key: CacheKey,
    /// Host-side view of the stage's files, built when a step needs it.
    stack: Option<LayerStack>,
}

pub struct Builder<'a> {
    store: &'a Store,
    cache: BuildCache,
    progress: StepLog,
    cancel: &'a AtomicBool,
    req: &'a BuildRequest,
    /// One VM per platform a stage runs on (`FROM --platform=$BUILDPLATFORM`
    /// stages get one of the build platform), booted on first use.
    sessions: HashMap<String, Session>,
    runtime: Option<tokio::runtime::Runtime>,
    context: Option<BuildContext>,
    steps: usize,
    cached: usize,
    vm_booted: bool,
}

/// The single line (continuations joined) an instruction was written as.
fn instruction_text(df: &Dockerfile, span: Span) -> String {
    let start = span.start.line.max(1);
    let end = span.end.line.max(start);
    let mut out = String::new();
    for line in df.source.iter().take(end).skip(start - 1) {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let line = line.strip_suffix(df.directives.escape).unwrap_or(line).trim();
        if !out.is_empty() && !line.is_empty() {
            out.push(' ');
        }
        out.push_str(line);
    }
    out
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
            progress: StepLog { progress, prefix: prefix.to_string() },
            cancel,
            req,
            sessions: HashMap::new(),
            runtime: None,
            context: None,
            steps: 0,
            cached: 0,
            vm_booted: false,
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
        for (_, session) in self.sessions.drain() {
            session.shutdown();
        }
        let mut states = result?;
        let state = states.remove(&graph.target).expect("the target stage was built");
        let (manifest, config_digest) = self.write_image(state)?;
        Ok(BuildOutcome { manifest, config_digest, steps: self.steps, cached: self.cached, vm_booted: self.vm_booted })
    }

    fn run_stages(&mut self, df: &Dockerfile, ev: &Evaluator<'_>, graph: &StageGraph) -> Result<HashMap<usize, StageState>, BuildError> {
        let mut built: HashMap<usize, StageState> = HashMap::new();
        for &index in &graph.order {
            let state = self.run_stage(df, ev, graph, index, &mut built)?;
            built.insert(index, state);
        }
        Ok(built)
    }

    fn at(&self, df: &Dockerfile, span: Span, message: impl Into<String>) -> BuildError {
        BuildError::Step(df.error_at(span, ErrorKind::Step(message.into())).in_file(&self.req.dockerfile))
    }

    fn run_stage(
        &mut self,
        df: &Dockerfile,
        ev: &Evaluator<'_>,
        graph: &StageGraph,
        index: usize,
        built: &mut HashMap<usize, StageState>,
    ) -> Result<StageState, BuildError> {
        let stage = &df.stages[index];
        let node = &graph.stages[index];
        let platform = node.platform.clone().unwrap_or_else(|| self.req.platform.clone());
        // BuildKit's step names: "[2/4] RUN ..." or "[builder 2/4] RUN ..." in multi-stage builds.
        let label = match (&stage.name, df.stages.len()) {
            (_, 1) => String::new(),
            (Some(name), _) => format!("{name} "),
            (None, _) => format!("stage-{index} "),
        };
        let is_vertex = |k: &InstructionKind| {
            matches!(k, InstructionKind::Run(_) | InstructionKind::Copy(_) | InstructionKind::Add(_) | InstructionKind::Workdir(_))
        };
        // Shown expanded, as BuildKit does: "FROM docker.io/library/debian:bookworm".
        let from_text = match (&node.base, &stage.name) {
            (BaseRef::Image(name), Some(alias)) => format!("FROM {name} AS {alias}"),
            (BaseRef::Image(name), None) => format!("FROM {name}"),
            _ => instruction_text(df, stage.span),
        };

        let total_of = |instrs: &[Instruction]| 1 + instrs.iter().filter(|i| is_vertex(&i.kind)).count();
        let total = total_of(&stage.instructions);
        let step = self.progress.start(&format!("[{label}1/{total}] {from_text}"));
        let started = Instant::now();
        let mut state = match &node.base {
            BaseRef::Scratch => StageState {
                config: ImageConfigFile::scratch(&platform),
                layers: Vec::new(),
                key: CacheKey::root(&format!("scratch {platform}")),
                stack: Some(LayerStack::empty()),
            },
            BaseRef::Stage(i) => built.get(i).cloned().expect("stages are built in dependency order"),
            BaseRef::Image(name) => {
                let image = self.resolve_image(name, &platform).map_err(|e| self.at(df, stage.span, e))?;
                self.state_from_image(&image).map_err(|e| self.at(df, stage.span, e))?
            }
        };
        self.progress.end(step, StepEnd::Done, started.elapsed());

        // A new stage: CMD counts as set only once this stage sets it.
        state.config.config.cmd_set = false;
        // The base image's ONBUILD triggers run first, then are dropped.
        let triggers = std::mem::take(&mut state.config.config.on_build);
        let mut instructions: Vec<Instruction> = Vec::new();
        for trigger in &triggers {
            let instr = crate::dockerfile::instructions::parse_trigger(trigger, df.directives.escape)
                .map_err(|e| self.at(df, stage.span, format!("ONBUILD trigger of the base image: {e}")))?;
            instructions.push(Instruction { span: stage.span, ..instr });
        }
        instructions.extend(stage.instructions.iter().cloned());

        let env = state.config.config.env_pairs();
        let mut scope = ev.scope(&env);
        let total = total_of(&instructions);
        let mut number = 1;
        for (n, instr) in instructions.iter().enumerate() {
            let expanded = scope.expand(instr).map_err(|e| e.in_file(&self.req.dockerfile))?;
            let text = if n < triggers.len() { triggers[n].clone() } else { instruction_text(df, instr.span) };
            if is_vertex(&instr.kind) {
                number += 1;
            }
            let name = format!("[{label}{number}/{total}] {text}");
            self.step(df, &platform, &mut scope, &mut state, built, &expanded, &text, &name)?;
        }
        Ok(state)
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        df: &Dockerfile,
        platform: &Platform,
        scope: &mut Scope<'_, '_>,
        state: &mut StageState,
        built: &mut HashMap<usize, StageState>,
        instr: &Instruction,
        text: &str,
        name: &str,
    ) -> Result<(), BuildError> {
        let span = instr.span;
        let config = &mut state.config.config;
        let created = self.created();
        let meta = |state: &mut StageState| {
            state.config.history.push(History {
                created: Some(created),
                created_by: text.to_string(),
                comment: "buildkit.dockerfile.v0".into(),
                empty_layer: true,
                ..Default::default()
            });
        };
        match &instr.kind {
            InstructionKind::Maintainer(m) => state.config.author = m.clone(),
            InstructionKind::Arg(_) => return Ok(()),
            InstructionKind::Workdir(_) => {
                config.apply(&instr.kind).map_err(|e| self.at(df, span, e))?;
                let step = self.progress.start(name);
                let started = Instant::now();
                let result = self.workdir(df, span, state, text);
                self.finish(step, started, result)?;
                return Ok(());
            }
            InstructionKind::Run(run) => {
                let step = self.progress.start(name);
                let started = Instant::now();
                let result = self.run(df, span, platform, scope, state, built, run, text, step);
                self.finish(step, started, result)?;
                return Ok(());
            }
            InstructionKind::Copy(_) | InstructionKind::Add(_) => {
                let step = self.progress.start(name);
                let started = Instant::now();
                let result = self.copy(df, platform, scope, state, built, instr, text);
                self.finish(step, started, result)?;
                return Ok(());
            }
            kind => {
                config.apply(kind).map_err(|e| self.at(df, span, e))?;
            }
        }
        meta(state);
        Ok(())
    }

    /// Ends a step's progress line; a step reports whether it was cached.
    fn finish(&mut self, step: usize, started: Instant, result: Result<bool, BuildError>) -> Result<(), BuildError> {
        self.steps += 1;
        match result {
            Ok(true) => {
                self.cached += 1;
                self.progress.end(step, StepEnd::Cached, started.elapsed());
                Ok(())
            }
            Ok(false) => {
                self.progress.end(step, StepEnd::Done, started.elapsed());
                Ok(())
            }
            Err(e) => {
                self.progress.end(step, StepEnd::Error, started.elapsed());
                Err(e)
            }
        }
    }

    fn created(&self) -> String {
        rfc3339(self.req.source_date_epoch.unwrap_or_else(now_unix))
    }

    fn layer_options(&self) -> LayerOptions {
        LayerOptions { compression: self.req.compression, source_date_epoch: self.req.source_date_epoch }
    }

    /// Looks `key` up; on a hit applies the cached result to `state`.
    fn try_cache(&mut self, key: &CacheKey, state: &mut StageState) -> Result<bool, BuildError> {
        if self.req.no_cache {
            return Ok(false);
        }
        let Some(entry) = self.cache.get(self.store, key) else { return Ok(false) };
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
        self.apply(state, key, layer, history)
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

    fn workdir(&mut self, df: &Dockerfile, span: Span, state: &mut StageState, text: &str) -> Result<bool, BuildError> {
        let dir = state.config.config.working_dir.clone();
        let owner = if state.config.config.user.is_empty() {
            Identity::default()
        } else {
            let spec = state.config.config.user.clone();
            self.identity(state, &spec).map_err(|e| self.at(df, span, e.to_string()))?
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
                Some(_) => return Err(self.at(df, span, format!("WORKDIR {dir}: /{path} exists and is not a directory"))),
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
        self.commit(key, state, layer, text)?;
        Ok(false)
    }

    fn write(&self, entries: &mut Vec<LayerEntry>, contents: &mut dyn ContentSource) -> Result<Option<LayerRef>, BuildError> {
        let layer = write_layer(self.store, entries, contents, &self.layer_options())?;
        Ok(layer.map(|l| LayerRef { descriptor: l.descriptor, diff_id: l.diff_id.to_string() }))
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        df: &Dockerfile,
        span: Span,
        platform: &Platform,
        scope: &Scope<'_, '_>,
        state: &mut StageState,
        built: &HashMap<usize, StageState>,
        run: &crate::dockerfile::instructions::Run,
        text: &str,
        step: usize,
    ) -> Result<bool, BuildError> {
        let config = &state.config.config;
        let argv = run_argv(config, run, scope, span).map_err(|e| e.in_file(&self.req.dockerfile))?;
        let mut env: Vec<String> = scope.run_env().0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(super::image_config::DEFAULT_PATH_ENV.to_string());
        }
        let cwd = if config.working_dir.is_empty() { "/".to_string() } else { config.working_dir.clone() };
        let no_network = self.req.network_none || run.network == Network::None;
        let user = config.user.clone();
        // Mounts: what they read from other stages/images is resolved now, for the key.
        let mut mount_keys = String::new();
        let mut mount_sources: Vec<Option<StageState>> = Vec::new();
        let mut context_binds = Vec::new();
        for m in &run.mounts {
            mount_keys.push_str(&run_mounts::key_part(m, &cwd));
            mount_keys.push('\n');
            let source = match (&m.kind, &m.from) {
                (MountType::Bind, Some(from)) => {
                    let s = match stages::source_ref(df, from, span).map_err(|e| e.in_file(&self.req.dockerfile))? {
                        SourceRef::Stage(i) => built.get(&i).cloned().expect("mount sources are built first"),
                        SourceRef::Image(name) => {
                            let image = self.resolve_image(&name, platform).map_err(|e| self.at(df, span, e))?;
                            self.state_from_image(&image).map_err(|e| self.at(df, span, e))?
                        }
                    };
                    mount_keys.push_str(&s.key.0);
                    Some(s)
                }
                (MountType::Bind, None) => {
                    // The context's files, planned like `COPY <source> /`: their checksum is the key.
                    let source = m.source.as_deref().unwrap_or(".");
                    let plan = self.plan_context_bind(df, span, source)?;
                    mount_keys.push_str(&plan.checksum);
                    // Only to choose file or directory; the contents come from the confined plan.
                    let is_file = std::fs::metadata(self.req.context.join(source.trim_start_matches('/'))).is_ok_and(|m| m.is_file());
                    context_binds.push((plan, is_file));
                    None
                }
                (MountType::Ssh, _) => return Err(self.at(df, span, "RUN --mount=type=ssh is not supported yet")),
                _ => None,
            };
            mount_sources.push(source);
        }
        let key = CacheKey::derive(
            Some(&state.key),
            &[
                b"RUN",
                serde_json::to_string(&argv).expect("strings serialise").as_bytes(),
                serde_json::to_string(&env).expect("strings serialise").as_bytes(),
                user.as_bytes(),
                cwd.as_bytes(),
                if no_network { b"none" } else { b"default" },
                mount_keys.as_bytes(),
            ],
        );
        if self.try_cache(&key, state)? {
            return Ok(true);
        }
        let id = self.identity(state, &user).map_err(|e| self.at(df, span, e.to_string()))?;
        let platform_key = platform.to_string();
        self.ensure_session(df, span, platform)?;
        let mut secrets = Vec::new();
        for m in run.mounts.iter().filter(|m| m.kind == MountType::Secret) {
            secrets.push(run_mounts::secret_for(m, &self.req.secrets).map_err(|e| self.at(df, span, e))?);
        }
        let mut secrets = secrets.into_iter();
        let mut context_binds = context_binds.into_iter();
        let mut mounts = Vec::new();
        let mut volumes = Vec::new();
        for (m, source) in run.mounts.iter().zip(&mount_sources) {
            match m.kind {
                MountType::Tmpfs => mounts.push(MountSpec::Tmpfs { target: run_mounts::target_path(m, &cwd, ""), size_bytes: m.size }),
                MountType::Secret => {
                    if let Some((_, spec)) = secrets.next().expect("one per secret mount") {
                        mounts.push(spec);
                    }
                }
                MountType::Cache => {
                    let volume = run_mounts::CacheVolume::for_mount(m, &cwd, platform, self.store.root());
                    self.sessions.get_mut(&platform_key).expect("booted above").ensure_cache(&volume, self.cancel)?;
                    mounts.push(MountSpec::Bind {
                        source: volume.scratch_dir.clone(),
                        target: run_mounts::target_path(m, &cwd, ""),
                        readonly: false,
                    });
                    volumes.push(volume);
                }
                MountType::Bind if m.from.is_none() => {
                    let (plan, is_file) = context_binds.next().expect("one plan per context bind");
                    let dir = self.unpack_context_bind(&platform_key, plan, is_file)?;
                    mounts.push(MountSpec::Bind { source: dir, target: run_mounts::target_path(m, &cwd, ""), readonly: m.readonly });
                }
                MountType::Bind => {
                    let source = source.as_ref().expect("bind sources resolved above");
                    let session = self.sessions.get_mut(&platform_key).expect("booted above");
                    let lowers = session.lowers_for(self.store, &source.layers, self.cancel)?;
                    let subpath = m.source.clone().unwrap_or_default().trim_start_matches('/').to_string();
                    mounts.push(MountSpec::Overlay { lowers, subpath, target: run_mounts::target_path(m, &cwd, "") });
                }
                MountType::Ssh => unreachable!("rejected above"),
            }
        }
        let spec = RunSpec {
            argv: argv.clone(),
            env,
            cwd,
            uid: id.uid,
            gid: id.gid,
            groups: id.groups,
            no_network,
            mounts,
            layers: &state.layers,
        };
        let mut tail = OutputTail::default();
        let progress = &self.progress;
        let mut sink = |stream: u8, bytes: &[u8]| {
            tail.push(bytes);
            progress.output(step, stream, bytes);
        };
        let session = self.sessions.get_mut(&platform_key).expect("booted above");
        let (outcome, entries) = session.run(self.store, spec, &mut sink, self.cancel)?;
        let Some(mut entries) = entries else {
            let command = match &run.command {
                ShellOrExec::Shell(s) => s.clone(),
                ShellOrExec::Exec(a) => serde_json::to_string(a).unwrap_or_default(),
            };
            return Err(self.at(
                df,
                span,
                format!("process \"{command}\" did not complete successfully: {}\n{}", outcome.status, tail.render()),
            ));
        };
        let layer = {
            let session = self.sessions.get_mut(&platform_key).expect("booted above");
            let image = session.scratch_image()?.to_path_buf();
            let written = Ext4Contents::open(&image, &outcome.upper)
                .map_err(|e| BuildError::Snapshot(format!("opening {}: {e}", image.display())))
                .and_then(|mut contents| {
                    let layer = write_layer(self.store, &mut entries, &mut contents, &self.layer_options())?;
                    Ok(layer.map(|l| LayerRef { descriptor: l.descriptor, diff_id: l.diff_id.to_string() }))
                });
            // Thaw whatever happened, so the VM stays usable (and can shut down cleanly).
            let thawed = self.sessions.get_mut(&platform_key).expect("booted").thaw(self.cancel);
            let layer = written?;
            thawed?;
            layer
        };
        if let Some(layer) = &layer {
            self.sessions.get_mut(&platform_key).expect("booted").adopt(&layer.diff_id, &outcome.upper);
        }
        // How long the snapshot took, for users and scripts/bench-snapshot.sh.
        let seconds = outcome.exited_at.elapsed().as_secs_f64();
        let file_mb = entries.iter().map(|e| if let EntryKind::File { size, .. } = e.kind { size } else { 0 }).sum::<u64>() as f64 / 1e6;
        let note = match &layer {
            Some(l) => format!(
                "snapshot: {file_mb:.1} MB in {} entries -> {:.1} MB layer, {seconds:.2}s after the command exited ({:.1} MB/s)\n",
                entries.len(),
                l.descriptor.size() as f64 / 1e6,
                file_mb / seconds.max(1e-3)
            ),
            None => format!("snapshot: no changes ({seconds:.2}s)\n"),
        };
        self.progress.output(step, kiln_protocol::stream::STDERR, note.as_bytes());
        for volume in &volumes {
            self.save_cache_volume(&platform_key, volume)?;
        }
        self.commit(key, state, layer, &format!("{text} # buildkit"))?;
        Ok(false)
    }

    /// Plans the build context's files under `source` for a bind mount.
    fn plan_context_bind(&mut self, df: &Dockerfile, span: Span, source: &str) -> Result<copy::CopyPlan, BuildError> {
        if self.context.is_none() {
            self.context = Some(BuildContext::open(&self.req.context, Some(&self.req.dockerfile))?);
        }
        let sources = [source.to_string()];
        let empty = LayerStack::empty();
        let input = CopyInput {
            add: false,
            sources: &sources,
            inline: &[],
            dest: "/",
            workdir: "/",
            owner: None,
            chmod: None,
            parents: false,
            exclude: &[],
            checksum: None,
            unpack: None,
            dest_root: &empty,
        };
        let context = CopySource::Context(self.context.as_ref().expect("opened above"));
        copy::plan(&input, context).map_err(|e| self.at(df, span, format!("RUN --mount=type=bind,source={source}: {e}")))
    }

    /// Sends a planned context bind into the VM; returns its scratch directory.
    fn unpack_context_bind(&mut self, platform_key: &str, plan: copy::CopyPlan, is_file: bool) -> Result<String, BuildError> {
        let mut entries = plan.entries;
        let mut contents = plan.contents;
        let single_file = match entries.as_slice() {
            [LayerEntry { path, kind: EntryKind::File { .. }, .. }] if is_file => Some(path.clone()),
            _ => None,
        };
        let mut tar = tempfile::tempfile_in(self.store.root().join("tmp"))
            .map_err(|e| BuildError::Snapshot(format!("staging a bind mount: {e}")))?;
        let opts = LayerOptions { compression: Compression::None, source_date_epoch: None };
        super::layer_tar::write_tar(&mut entries, contents.as_mut(), &opts, &mut tar)?;
        std::io::Seek::rewind(&mut tar).map_err(|e| BuildError::Snapshot(format!("staging a bind mount: {e}")))?;
        let session = self.sessions.get_mut(platform_key).expect("booted");
        let dir = session.unpack_fresh(&mut std::io::BufReader::new(tar), self.cancel)?;
        // A single file is mounted as that file, a directory as the directory.
        Ok(match single_file {
            Some(name) => format!("{dir}/{name}"),
            None => dir,
        })
    }

    /// Writes a cache volume back to the host (a temp file renamed over the
    /// old one, so a crash leaves the previous volume whole).
    fn save_cache_volume(&mut self, platform_key: &str, volume: &run_mounts::CacheVolume) -> Result<(), BuildError> {
        let session = self.sessions.get_mut(platform_key).expect("booted");
        let mut entries = session.snapshot_dir(&volume.scratch_dir, self.cancel)?;
        let image = session.scratch_image()?.to_path_buf();
        let written = (|| -> Result<(), BuildError> {
            let dir = volume.host_tar.parent().expect("volume paths have a parent");
            let io = |e: std::io::Error| BuildError::Snapshot(format!("saving the cache volume {}: {e}", volume.host_tar.display()));
            std::fs::create_dir_all(dir).map_err(io)?;
            let mut contents = Ext4Contents::open(&image, &volume.scratch_dir).map_err(io)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
            let opts = LayerOptions { compression: Compression::None, source_date_epoch: None };
            super::layer_tar::write_tar(&mut entries, &mut contents, &opts, &mut std::io::BufWriter::new(tmp.as_file_mut()))?;
            tmp.persist(&volume.host_tar).map_err(|e| io(e.error))?;
            Ok(())
        })();
        let thawed = self.sessions.get_mut(platform_key).expect("booted").thaw(self.cancel);
        written?;
        thawed?;
        Ok(())
    }

    fn ensure_session(&mut self, df: &Dockerfile, span: Span, platform: &Platform) -> Result<(), BuildError> {
        if self.sessions.contains_key(&platform.to_string()) {
            return Ok(());
        }
        let step = self.progress.start(&format!("[internal] booting a {platform} VM"));
        let started = Instant::now();
        let mut config = VmConfig::new(platform.clone());
        config.memory_mib = self.req.memory_mib;
        config.cpus = self.req.cpus;
        let result = crate::vm::boot_files(platform, None)
            .map_err(|e| self.at(df, span, e.to_string()))
            .and_then(|files| Ok(Session::boot(&config, &files, self.cancel)?));
        match result {
            Ok(session) => {
                self.progress.end(step, StepEnd::Done, started.elapsed());
                self.sessions.insert(platform.to_string(), session);
                self.vm_booted = true;
                Ok(())
            }
            Err(e) => {
                self.progress.end(step, StepEnd::Error, started.elapsed());
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(
        &mut self,
        df: &Dockerfile,
        platform: &Platform,
        scope: &Scope<'_, '_>,
        state: &mut StageState,
        built: &mut HashMap<usize, StageState>,
        instr: &Instruction,
        text: &str,
    ) -> Result<bool, BuildError> {
        let span = instr.span;
        let (add, sources, dest, from, chown, chmod, link, parents, exclude, heredocs, checksum, unpack) = match &instr.kind {
            InstructionKind::Copy(c) => {
                (false, &c.sources, &c.dest, c.from.clone(), &c.chown, &c.chmod, c.link, c.parents, &c.exclude, &c.heredocs, None, None)
            }
            InstructionKind::Add(a) => {
                (true, &a.sources, &a.dest, None, &a.chown, &a.chmod, a.link, false, &a.exclude, &a.heredocs, a.checksum.clone(), a.unpack)
            }
            _ => unreachable!("copy() is called for COPY and ADD"),
        };
        let inline: Vec<(String, String)> = heredocs
            .iter()
            .map(|doc| Ok((doc.name.clone(), scope.heredoc_content(doc, span)?)))
            .collect::<Result<_, crate::dockerfile::Error>>()
            .map_err(|e| e.in_file(&self.req.dockerfile))?;
        let owner = match chown {
            Some(spec) => {
                let mut id = self.identity(state, spec).map_err(|e| self.at(df, span, format!("--chown={spec}: {e}")))?;
                id.groups.clear();
                Some(id)
            }
            None => None,
        };
        // The source side: the context, another stage or an image.
        let mut from_state = match &from {
            None => None,
            Some(f) => Some(match stages::source_ref(df, f, span).map_err(|e| e.in_file(&self.req.dockerfile))? {
                SourceRef::Stage(i) => built.get(&i).cloned().expect("--from stages are built first"),
                SourceRef::Image(name) => {
                    let image = self.resolve_image(&name, platform).map_err(|e| self.at(df, span, e))?;
                    self.state_from_image(&image).map_err(|e| self.at(df, span, e))?
                }
            }),
        };
        if let Some(s) = from_state.as_mut() {
            self.stack(s)?;
        }
        if from_state.is_none() && self.context.is_none() {
            let ctx = BuildContext::open(&self.req.context, Some(&self.req.dockerfile))?;
            self.context = Some(ctx);
        }
        self.stack(state)?;
        let workdir = if state.config.config.working_dir.is_empty() { "/".to_string() } else { state.config.config.working_dir.clone() };
        let empty_root = LayerStack::empty();
        let plan = {
            let input = CopyInput {
                add,
                sources,
                inline: &inline,
                dest,
                workdir: &workdir,
                owner: owner.clone(),
                chmod: chmod.as_deref(),
                parents,
                exclude,
                checksum: checksum.as_deref(),
                unpack,
                // A --link layer may not depend on what is below it.
                dest_root: if link { &empty_root } else { state.stack.as_ref().expect("indexed above") },
            };
            let source = match &from_state {
                Some(s) => CopySource::Stack { stack: s.stack.as_ref().expect("indexed above"), store: self.store },
                None => CopySource::Context(self.context.as_ref().expect("opened above")),
            };
            copy::plan(&input, source).map_err(|e| self.at(df, span, e.to_string()))?
        };
        // --link layers do not depend on what is below them.
        let parent = if link { None } else { Some(&state.key) };
        let key = CacheKey::derive(
            parent,
            &[if add { b"ADD" } else { b"COPY" }, plan.checksum.as_bytes(), text.as_bytes(), workdir.as_bytes()],
        );
        let key = if link { CacheKey::derive(Some(&state.key), &[key.0.as_bytes()]) } else { key };
        if self.try_cache(&key, state)? {
            return Ok(true);
        }
        let mut entries = plan.entries;
        let mut contents = plan.contents;
        let layer = self.write(&mut entries, contents.as_mut())?;
        self.commit(key, state, layer, &format!("{text} # buildkit"))?;
        Ok(false)
    }

    /// Finds a base image: the local store first (like the classic builder),
    /// the registry with `--pull` or when it is missing.
    fn resolve_image(&mut self, name: &str, platform: &Platform) -> Result<Image, String> {
        if !self.req.pull {
            if let Ok((_, desc)) = crate::registry::reference::resolve_local(self.store, name) {
                let image = self.store.image(&desc, Some(platform)).map_err(|e| format!("{name}: {e}"))?;
                return check_platform(name, image, platform);
            }
        }
        let reference = Reference::parse(name).map_err(|e| format!("{name}: {e}"))?;
        let client = Client::new(self.req.registry.clone()).map_err(|e| e.to_string())?;
        if self.runtime.is_none() {
            self.runtime = Some(
                tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| format!("starting the async runtime: {e}"))?,
            );
        }
        let step = self.progress.start(&format!("[internal] pulling {reference} ({platform})"));
        let started = Instant::now();
        let opts = PullOptions { platform: Some(platform.clone()), all_platforms: false };
        let pulled = self.runtime.as_ref().expect("set above").block_on(client.pull(self.store, &reference, &opts));
        let report = match pulled {
            Ok(r) => {
                self.progress.end(step, StepEnd::Done, started.elapsed());
                r
            }
            Err(e) => {
                self.progress.end(step, StepEnd::Error, started.elapsed());
                return Err(format!("{name}: not in the local store, and pulling it failed: {e}"));
            }
        };
        let image = self.store.image(&report.descriptor, Some(platform)).map_err(|e| format!("{name}: {e}"))?;
        check_platform(name, image, platform)
    }

    fn state_from_image(&self, image: &Image) -> Result<StageState, String> {
        let config: ImageConfigFile =
            serde_json::from_slice(&image.config_bytes).map_err(|e| format!("the image config is not valid: {e}"))?;
        let diff_ids = &config.rootfs.diff_ids;
        let layers = image.manifest.layers();
        if layers.len() != diff_ids.len() {
            return Err(format!("the image has {} layers but its config lists {} diff_ids", layers.len(), diff_ids.len()));
        }
        let layers = layers
            .iter()
            .zip(diff_ids)
            .map(|(d, id)| LayerRef { descriptor: d.clone(), diff_id: id.clone() })
            .collect();
        Ok(StageState { key: CacheKey::root(image.manifest_descriptor.digest().as_ref()), config, layers, stack: None })
    }

    /// Writes the final config and manifest into the store.
    fn write_image(&mut self, state: StageState) -> Result<(Descriptor, String), BuildError> {
        let mut config = state.config;
        for (k, v) in &self.req.labels {
            config.config.labels.insert(k.clone(), v.clone());
        }
        config.created = Some(self.created());
        let config_desc = self.store.put_json(&config, MediaType::Other(media::OCI_CONFIG.into()))?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": config_desc,
            "layers": state.layers.iter().map(|l| &l.descriptor).collect::<Vec<_>>(),
        });
        let mut desc = self.store.put_json(&manifest, MediaType::Other(media::OCI_MANIFEST.into()))?;
        let platform = Platform::new(&config.os, &config.architecture, config.variant.as_deref());
        let platform = crate::oci::model::oci_platform(&platform);
        desc.set_platform(Some(platform));
        Ok((desc, config_desc.digest().to_string()))
    }
}

fn check_platform(name: &str, image: Image, want: &Platform) -> Result<Image, String> {
    let have = image.platform();
    if !crate::oci::model::platform_matches(want, &have) {
        return Err(format!(
            "{name} is a {have} image, not {want}: build with --platform {have}, or use a {want} base image"
        ));
    }
    Ok(image)
}

/// The argv of a RUN: exec form as is; shell form through the SHELL; a
/// heredoc body as the script when the command is only `<<EOF`.
fn run_argv(
    config: &super::image_config::RunConfig,
    run: &crate::dockerfile::instructions::Run,
    scope: &Scope<'_, '_>,
    span: Span,
) -> Result<Vec<String>, crate::dockerfile::Error> {
    match &run.command {
        ShellOrExec::Exec(argv) => Ok(argv.clone()),
        ShellOrExec::Shell(line) => {
            let mut script = line.clone();
            if let Some(first) = run.heredocs.first() {
                let body = scope.heredoc_content(first, span)?;
                if line.trim_start().starts_with("<<") && line.split_whitespace().count() == 1 {
                    script = body;
                } else {
                    for doc in &run.heredocs {
                        let body = scope.heredoc_content(doc, span)?;
                        script.push('\n');
                        script.push_str(&body);
                        script.push_str(&doc.name);
                    }
                }
            }
            Ok(config.command_argv(&ShellOrExec::Shell(script)))
        }
    }
}

/// The last lines of a failed step's output, for the error message.
#[derive(Default)]
struct OutputTail {
    bytes: Vec<u8>,
}

const TAIL_BYTES: usize = 64 * 1024;
const TAIL_LINES: usize = 20;

impl OutputTail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > 2 * TAIL_BYTES {
            self.bytes.drain(..self.bytes.len() - TAIL_BYTES);
        }
    }

    fn render(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(TAIL_LINES);
        let shown: Vec<String> = lines[start..].iter().map(|l| format!("  > {l}")).collect();
        if shown.is_empty() {
            "  (no output)".into()
        } else {
            format!("last output lines:\n{}", shown.join("\n"))
        }
    }
}

/// A build's handle on the (possibly shared) progress display.
struct StepLog {
    progress: Arc<Mutex<Progress>>,
    prefix: String,
}

impl StepLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        // A panic elsewhere while printing must not hide this build's errors.
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&self, name: &str) -> usize {
        let name = match name.strip_prefix('[') {
            Some(rest) if !self.prefix.is_empty() => format!("[{}{rest}", self.prefix),
            _ => name.to_string(),
        };
        self.lock().start(&name)
    }

    fn output(&self, id: usize, stream: u8, bytes: &[u8]) {
        self.lock().output(id, stream, bytes)
    }

    fn end(&self, id: usize, how: StepEnd, elapsed: std::time::Duration) {
        self.lock().end(id, how, elapsed)
    }
}

/// For layers with no regular files.
struct NoContent;

impl ContentSource for NoContent {
    fn open(&mut self, entry: &LayerEntry) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        Err(std::io::Error::other(format!("{}: no content source", entry.path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_text_joins_continuations() {
        let df = crate::dockerfile::parse_str("FROM scratch\nRUN a \\\n  && b\nCOPY x /y\n").unwrap();
        let run = &df.stages[0].instructions[0];
        assert_eq!(instruction_text(&df, run.span), "RUN a && b");
        assert_eq!(instruction_text(&df, df.stages[0].instructions[1].span), "COPY x /y");
    }

    #[test]
    fn output_tail_keeps_the_last_lines() {
        let mut t = OutputTail::default();
        for i in 0..100 {
            t.push(format!("line {i}\n").as_bytes());
        }
        let r = t.render();
        assert!(r.contains("line 99") && r.contains("line 80") && !r.contains("line 79\n"), "{r}");
    }
}
