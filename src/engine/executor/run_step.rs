//! The RUN step: its command line and environment, its cache key (mounts
//! included), then the command in the platform's VM, whose session turns
//! the changes into a layer.

use kiln_protocol::{ExecRequest, ExitStatus};

use super::{step_error, Builder, StageState, StepCx};
use crate::engine::cache::CacheKey;
use crate::engine::image_config::{RunConfig, DEFAULT_PATH_ENV};
use crate::engine::run_mounts::{MountError, MountSource, MountTarget, RunMounts};
use crate::engine::vm_session::{RunSpec, SessionError};
use crate::engine::BuildError;
use crate::vm::VmError;
use crate::dockerfile::expand::Scope;
use crate::dockerfile::instructions::{Network, Run, Security};
use crate::dockerfile::mount::{Mount, MountType};
use crate::dockerfile::{ShellOrExec, Span};

impl Builder<'_> {
    /// `RUN --network=host` and `--security=insecure` need the build's
    /// `--allow`, as in buildx. In the VM, host networking is the VM's own
    /// network (what every RUN has), and a RUN already holds every
    /// capability without seccomp, so once allowed they run as any RUN does.
    fn check_entitlements(&self, cx: &StepCx<'_>, run: &Run) -> Result<(), BuildError> {
        let span = cx.instr.span;
        if run.network == Network::Host && !self.req.allow_network_host {
            let why = "RUN --network=host needs the entitlement: build with --allow network.host (it then uses the build VM's network)";
            return Err(step_error(cx.df, &self.req.dockerfile, span, why));
        }
        if run.security == Security::Insecure && !self.req.allow_insecure {
            let why = "RUN --security=insecure needs the entitlement: build with --allow security.insecure";
            return Err(step_error(cx.df, &self.req.dockerfile, span, why));
        }
        Ok(())
    }

    /// Runs `run` (or takes it from the cache); returns whether it was cached.
    pub(super) fn run(&mut self, cx: &StepCx<'_>, scope: &Scope<'_, '_>, state: &mut StageState, run: &Run) -> Result<bool, BuildError> {
        let span = cx.instr.span;
        self.check_entitlements(cx, run)?;
        let config = &state.config.config;
        let argv = run_argv(config, run, scope, span).map_err(|e| e.in_file(&self.req.dockerfile))?;
        let mut env: Vec<String> = scope.run_env().iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(DEFAULT_PATH_ENV.to_string());
        }
        let cwd = if config.working_dir.is_empty() { "/".to_string() } else { config.working_dir.clone() };
        let no_network = self.req.network_none || run.network == Network::None;
        let user = config.user.clone();
        // What mounts read from other stages, images or the context is resolved now, for the key.
        let mounts = RunMounts::resolve(&run.mounts, &cwd, |m| self.mount_source(cx, m))?;
        let (argv_json, env_json) = (serde_json::to_string(&argv).expect("strings serialise"), serde_json::to_string(&env).expect("strings serialise"));
        let mut key_parts: Vec<&[u8]> = vec![
            b"RUN",
            argv_json.as_bytes(),
            env_json.as_bytes(),
            user.as_bytes(),
            cwd.as_bytes(),
            if no_network { b"none" } else { b"default" },
            mounts.key.as_bytes(),
        ];
        let options_key = self.req.run_options.key_part();
        if !options_key.is_empty() {
            key_parts.push(options_key.as_bytes());
        }
        let key = CacheKey::derive(Some(&state.key), &key_parts);
        if self.try_cache(&key, state)? {
            return Ok(true);
        }
        let id = self.identity(state, &user).map_err(|e| self.at(cx, e.to_string()))?;
        let layer_options = self.layer_options();
        let session = match self.sessions.get(cx.platform, self.store, &state.layers, &self.progress, self.cancel) {
            Ok(session) => session,
            // No kernel or agent for the platform: a problem of this step's line.
            Err(SessionError::BootFiles(e)) => return Err(step_error(cx.df, &self.req.dockerfile, span, e.to_string())),
            Err(e) => return Err(e.into()),
        };
        let target = MountTarget {
            store: self.store,
            platform: cx.platform,
            cwd: &cwd,
            secrets: &self.req.secrets,
            ssh_agents: &self.req.run_options.ssh_agents,
            cancel: self.cancel,
            note: &|line: &str| self.progress.output(cx.step, kiln_protocol::stream::STDERR, line.as_bytes()),
        };
        let in_vm = mounts.into_specs(session, &target).map_err(|e| match e {
            MountError::Secret(message) | MountError::Ssh(message) => step_error(cx.df, &self.req.dockerfile, span, message),
            e => e.into(),
        })?;
        let (mount_specs, volumes) = (in_vm.specs, in_vm.caches);
        // As BuildKit: the first ssh mount is the command's agent (not part of the key).
        if let Some(sock) = in_vm.ssh_auth_sock.filter(|_| !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK="))) {
            env.push(format!("SSH_AUTH_SOCK={sock}"));
        }
        // BuildKit names a failed RUN by its whole command line.
        let command_line = argv.join(" ");
        let mut request = ExecRequest {
            argv,
            env,
            cwd,
            uid: id.uid,
            gid: id.gid,
            groups: id.groups,
            no_network,
            mounts: mount_specs,
            ..Default::default()
        };
        self.req.run_options.apply(&mut request);
        let progress = &self.progress;
        let mut sink = |stream: u8, bytes: &[u8]| progress.output(cx.step, stream, bytes);
        // The VM failing under this step (a guest kernel panic, QEMU dying) is
        // reported at the step's line, like the command failing.
        let dockerfile = &self.req.dockerfile;
        let at_line = |e: SessionError| match e {
            SessionError::Vm(VmError::Interrupted) => BuildError::from(e),
            e => step_error(cx.df, dockerfile, span, e.to_string()),
        };
        let ready = session.prepare_layers(self.store, &state.layers, self.cancel).map_err(at_line)?;
        if ready.mounted + ready.unpacked > 0 {
            let note = format!("layers: {} mounted from disk images, {} unpacked, {:.2}s\n", ready.mounted, ready.unpacked, ready.seconds);
            progress.output(cx.step, kiln_protocol::stream::STDERR, note.as_bytes());
        }
        let spec = RunSpec { request, layers: &state.layers, ssh_agents: in_vm.ssh_agents };
        let outcome = session.run(self.store, spec, &layer_options, &mut sink, self.cancel).map_err(at_line)?;
        let Some(snapshot) = outcome.snapshot else {
            // BuildKit's words; the progress shows the step's last output lines.
            let status = match outcome.status {
                ExitStatus::Code { code } => format!("exit code: {code}"),
                other => other.to_string(),
            };
            let message = format!("process \"{command_line}\" did not complete successfully: {status}");
            return Err(step_error(cx.df, &self.req.dockerfile, span, message));
        };
        // How long the snapshot took, for users and scripts/bench-snapshot.sh.
        let (file_mb, seconds) = (snapshot.file_bytes as f64 / 1e6, snapshot.seconds);
        let note = match &snapshot.layer {
            Some(l) => format!(
                "snapshot: {file_mb:.1} MB in {} entries -> {:.1} MB layer, {seconds:.2}s after the command exited ({:.1} MB/s)\n",
                snapshot.entries,
                l.descriptor.size() as f64 / 1e6,
                file_mb / seconds.max(1e-3)
            ),
            None => format!("snapshot: no changes ({seconds:.2}s)\n"),
        };
        progress.output(cx.step, kiln_protocol::stream::STDERR, note.as_bytes());
        for used in volumes.iter().filter(|u| u.kept()) {
            session.save_cache(&used.volume, self.cancel)?;
        }
        // The volumes' locks go with them, after they are saved.
        drop(volumes);
        self.commit(key, state, snapshot.layer, &format!("{} # buildkit", cx.text))?;
        Ok(false)
    }

    /// What a mount reads, and what that adds to the step's key.
    fn mount_source(&mut self, cx: &StepCx<'_>, m: &Mount) -> Result<(MountSource, String), BuildError> {
        match (&m.kind, &m.from) {
            (MountType::Bind, Some(from)) => {
                let source = self.source_state(cx, from)?;
                Ok((MountSource::Layers(source.layers), source.key.0))
            }
            (MountType::Bind, None) => {
                // The context's files, planned like `COPY <source> /`: their checksum is the key.
                let source = m.source.as_deref().unwrap_or(".");
                let plan = self.plan_context_bind(cx, source)?;
                let checksum = plan.checksum.clone();
                // Only to choose file or directory; the contents come from the confined plan.
                let is_file = std::fs::metadata(self.req.context.join(source.trim_start_matches('/'))).is_ok_and(|m| m.is_file());
                Ok((MountSource::Context { plan, is_file }, checksum))
            }
            _ => Ok((MountSource::Nothing, String::new())),
        }
    }
}

/// The argv of a RUN: exec form as is; shell form through the SHELL; a
/// heredoc body as the script when the command is only `<<EOF`.
fn run_argv(config: &RunConfig, run: &Run, scope: &Scope<'_, '_>, span: Span) -> Result<Vec<String>, crate::dockerfile::Error> {
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
