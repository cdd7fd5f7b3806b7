//! `kiln build`: buildx's flags mapped onto a [`BuildRequest`], then the
//! result loaded, exported or pushed as `--output`/`--load`/`--push` ask.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::Args;

use crate::engine::progress::{Progress, ProgressMode, StepLog};
use crate::engine::cache_exchange::{self, CacheExport, CacheLocation, CacheMode, CacheRecord, ImportedCache};
use crate::engine::annotations::{self, Target};
use crate::engine::named_context::NamedContexts;
use crate::engine::remote_context::{self, Fetched};
use crate::engine::run_options::RunOptions;
use crate::engine::{fs_export, BuildOutcome, BuildRequest, Builder};
use crate::oci::docker_engine;
use crate::oci::layout::{self, ExportEntry, Format};
use crate::oci::{Compression, Store};
use crate::platform::Platform;
use crate::registry::{Client, PushOptions, Reference};

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build context: a directory, a git repository (URL#REF:SUBDIR), an http(s) URL of a tar archive or Dockerfile, or `-` (stdin: a tar context or the Dockerfile)
    #[arg(value_name = "PATH|URL|-")]
    pub context: String,
    /// Name of the Dockerfile (default: PATH/Dockerfile)
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Name and optionally a tag (name:tag); repeatable
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// Target platform (e.g. linux/arm64)
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<Platform>,
    /// Set a build-time variable (NAME=value, or NAME to take it from the environment)
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Build this stage (default: the last)
    #[arg(long)]
    pub target: Option<String>,
    /// Do not use the cache
    #[arg(long)]
    pub no_cache: bool,
    /// Always fetch base images from their registry
    #[arg(long)]
    pub pull: bool,
    /// Set a label on the image (KEY=value); repeatable
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Output destination: type=oci|docker|image|registry|local|tar[,dest=PATH|-][,name=NAME][,push=true][,oci-mediatypes=false]; -o DIR, -o -; type=docker without dest loads into Docker
    #[arg(short = 'o', long = "output")]
    pub outputs: Vec<String>,
    /// Push the image to its registry (same as --output=type=registry)
    #[arg(long)]
    pub push: bool,
    /// Keep the image in kiln's local store (the default when tagging) and load it into Docker when a docker CLI is found
    #[arg(long)]
    pub load: bool,
    /// Progress display: auto, tty, plain, quiet or rawjson (default: $BUILDKIT_PROGRESS, else auto)
    #[arg(long, default_value = "auto", env = "BUILDKIT_PROGRESS", hide_env = true)]
    pub progress: ProgressMode,
    /// Print only the image ID on success (like --progress quiet)
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Write the image ID to this file
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// Write build result metadata (JSON) to this file
    #[arg(long)]
    pub metadata_file: Option<PathBuf>,
    /// Networking mode for RUN: default or none
    #[arg(long, default_value = "default")]
    pub network: String,
    /// Allow an entitlement: network.host (RUN --network=host) or security.insecure (RUN --security=insecure)
    #[arg(long = "allow", value_delimiter = ',', value_parser = ["network.host", "security.insecure"])]
    pub allow: Vec<String>,
    /// Secret to expose to the build: id=ID[,src=PATH|,env=VAR]
    #[arg(long)]
    pub secret: Vec<String>,
    /// Add a custom host-to-IP mapping to RUN's /etc/hosts: HOST:IP or HOST=IP (IP may be host-gateway)
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_host: Vec<String>,
    /// Size of /dev/shm in RUN (e.g. 64m, 1g; default 64m)
    #[arg(long = "shm-size", value_name = "SIZE")]
    pub shm_size: Option<String>,
    /// Resource limit for RUN: NAME=SOFT[:HARD] (nofile, nproc, core, memlock, stack, ...)
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// SSH agent socket for RUN --mount=type=ssh: default (SSH_AUTH_SOCK) or ID[=SOCKET]
    #[arg(long, value_name = "default|ID[=SOCKET]")]
    pub ssh: Vec<String>,
    /// Guest memory for the build VM, MiB
    #[arg(long, default_value_t = 2048)]
    pub memory: u64,
    /// Guest CPUs for the build VM (default: the host's, at most 4)
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Layer compression: gzip, zstd or none
    #[arg(long, default_value = "gzip")]
    pub compression: Compression,
    /// Export the build cache: type=registry,ref=REF or type=local,dest=DIR [,mode=min|max][,ignore-error=true]
    #[arg(long = "cache-to")]
    pub cache_to: Vec<String>,
    /// Import a build cache: REF, type=registry,ref=REF or type=local,src=DIR
    #[arg(long = "cache-from")]
    pub cache_from: Vec<String>,
    /// Registry connection: --insecure-registry, --ca-cert, --insecure-skip-tls-verify
    #[command(flatten)]
    pub registry: super::image::RegistryConnectionArgs,
    /// Named build context: name=DIR|GIT-URL|TAR-URL|docker-image://REF|oci-layout://DIR[:TAG|@DIGEST]; repeatable
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// Add an annotation: [manifest|index|manifest-descriptor[,...]][\[PLATFORM\]]:KEY=VALUE (default: manifest); repeatable
    #[arg(long = "annotation", value_name = "ANNOTATION")]
    pub annotations: Vec<String>,
    /// Do not use the cache for these stages (names, comma list)
    #[arg(long = "no-cache-filter", value_delimiter = ',', value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,
    /// Provenance attestation: kiln writes none, so only false is accepted (as scripts for buildx pass it)
    #[arg(long, value_name = "false")]
    pub provenance: Option<String>,
    /// SBOM attestation: kiln writes none, so only false is accepted
    #[arg(long, value_name = "false")]
    pub sbom: Option<String>,
    /// Attestation (type=provenance|sbom,disabled=true): kiln writes none, so only disabled ones are accepted
    #[arg(long = "attest", value_name = "ATTEST")]
    pub attest: Vec<String>,
    /// Instead of building: build (default), check (run the build checks), outline (args, secrets, ssh of the target) or targets (list the stages)
    #[arg(long, value_name = "build|check|outline|targets")]
    pub call: Option<String>,
    /// Shorthand for --call=check
    #[arg(long, conflicts_with = "call")]
    pub check: bool,
}

/// `--provenance`, `--sbom` and `--attest` may only turn attestations off:
/// kiln writes none, and a build that asked for one must not pass without it.
fn check_attestations(args: &BuildArgs) -> anyhow::Result<()> {
    let off = |v: &str| matches!(v.trim(), "false" | "0" | "disabled=true");
    for (flag, value) in [("--provenance", &args.provenance), ("--sbom", &args.sbom)] {
        if let Some(v) = value.as_deref().filter(|v| !off(v)) {
            bail!("{flag}={v}: kiln does not write attestations yet; drop the flag or pass {flag}=false");
        }
    }
    for spec in &args.attest {
        if !spec.split(',').any(off) {
            bail!("--attest {spec}: kiln does not write attestations yet; only disabled=true is accepted");
        }
    }
    Ok(())
}

/// One `--output`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    /// OCI layout: a tar file, or a directory with `tar=false`.
    Oci { dest: PathBuf, tar: bool },
    /// A Docker archive for `docker load`.
    Docker { dest: PathBuf },
    /// Into a Docker engine through `docker load` (`-o type=docker` without
    /// dest, which needs one; `--load`, which notes when there is none).
    DockerEngine { required: bool },
    /// Keep in the local store under `names`; push them when `push`.
    /// With `by_digest`, push to the names' repositories without a tag
    /// (and tag nothing locally), for a later `imagetools create`.
    /// `docker_media`: Docker v2 schema 2 media types (`oci-mediatypes=false`).
    Image { names: Vec<String>, push: bool, by_digest: bool, docker_media: bool },
    /// The final file system as files below a directory.
    Local { dest: PathBuf },
    /// The final file system as one tar; `-` is standard output.
    Tar { dest: PathBuf },
    /// Nothing but the build cache (`--cache-to`), as buildx's `type=cacheonly`.
    CacheOnly,
}

/// The comma-separated fields of an option value, read as CSV as buildx
/// reads them: a field in double quotes may hold commas (`"name=a,b"`).
fn csv_fields(spec: &str) -> anyhow::Result<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = spec.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("never empty").push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    if quoted {
        bail!("{spec}: a quote is not closed");
    }
    Ok(fields)
}

fn parse_output(spec: &str, tags: &[String]) -> anyhow::Result<Output> {
    // buildx's short forms: `-o DIR` is type=local, `-o -` a tar on stdout.
    if spec == "-" {
        return Ok(Output::Tar { dest: "-".into() });
    }
    if !spec.contains('=') && !spec.contains(',') {
        return Ok(Output::Local { dest: spec.into() });
    }
    let mut kv = BTreeMap::new();
    let mut names: Vec<String> = Vec::new();
    for field in csv_fields(spec).with_context(|| format!("--output {spec}"))? {
        let Some((k, v)) = field.split_once('=') else {
            bail!("--output {spec}: {field:?} is not key=value (quote a list of names: 'type=image,\"name=a,b\"')");
        };
        let (k, v) = (k.trim(), v.trim());
        if k == "name" {
            names.extend(v.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_string));
        }
        kv.insert(k.to_string(), v.to_string());
    }
    let kind = match kv.get("type") {
        Some(t) => t.clone(),
        None => bail!("--output {spec}: missing type="),
    };
    let dest = || -> anyhow::Result<PathBuf> {
        kv.get("dest").filter(|d| !d.is_empty()).map(PathBuf::from).with_context(|| format!("--output {spec}: dest= is required"))
    };
    let truthy = |k: &str| kv.get(k).is_some_and(|v| v.is_empty() || v == "true" || v == "1");
    Ok(match kind.as_str() {
        "oci" => Output::Oci { dest: dest()?, tar: kv.get("tar").map(|v| v != "false").unwrap_or(true) },
        "docker" if kv.get("dest").is_none_or(|d| d.is_empty()) => Output::DockerEngine { required: true },
        "docker" => Output::Docker { dest: dest()? },
        "image" | "registry" => {
            let names = if names.is_empty() { tags.to_vec() } else { names };
            if names.is_empty() {
                bail!("--output {spec}: give name= or --tag");
            }
            let docker_media = match kv.get("oci-mediatypes").map(String::as_str) {
                None | Some("true") => false,
                Some("false") => true,
                Some(v) => bail!("--output {spec}: oci-mediatypes={v}: expected true or false"),
            };
            Output::Image { names, push: kind == "registry" || truthy("push"), by_digest: truthy("push-by-digest"), docker_media }
        }
        "local" => Output::Local { dest: dest()? },
        "tar" => Output::Tar { dest: dest()? },
        "cacheonly" => Output::CacheOnly,
        other => bail!("--output {spec}: unknown type {other:?} (expected oci, docker, image, registry, local, tar or cacheonly)"),
    })
}

fn parse_build_args(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) => out.insert(k.to_string(), v.to_string()),
            // `--build-arg NAME` takes the value from the environment, or is ignored.
            None => match std::env::var(a) {
                Ok(v) => out.insert(a.clone(), v),
                Err(_) => continue,
            },
        };
    }
    Ok(out)
}

fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).with_context(|| format!("--label {l}: expected KEY=value")))
        .collect()
}

/// `--secret id=ID[,src=PATH|,env=VAR]` (buildx's forms; `type=file|env` too).
fn parse_secrets(specs: &[String]) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let mut kv = BTreeMap::new();
        for part in spec.split(',') {
            let (k, v) = part.split_once('=').with_context(|| format!("--secret: {part:?} is not KEY=VALUE"))?;
            kv.insert(k.trim(), v.trim());
        }
        let id = kv.get("id").copied().with_context(|| "--secret needs id=")?;
        let src = kv.get("src").or_else(|| kv.get("source")).copied();
        let env = kv.get("env").copied();
        let value = match (kv.get("type").copied(), src, env) {
            (Some("env") | None, None, Some(var)) | (Some("env"), Some(var), None) => {
                std::env::var(var).with_context(|| format!("--secret id={id}: the environment variable {var} is not set"))?.into_bytes()
            }
            (Some("file") | None, Some(path), None) => {
                std::fs::read(path).with_context(|| format!("--secret id={id}: reading {path}"))?
            }
            // buildx: with neither, the value comes from an env var named like the id.
            (None, None, None) => {
                std::env::var(id).with_context(|| format!("--secret id={id}: give src=FILE or env=VAR"))?.into_bytes()
            }
            _ => bail!("--secret id={id}: give one of src= or env="),
        };
        out.insert(id.to_string(), value);
    }
    Ok(out)
}

/// Where a context other than a local directory was put for the build.
enum ContextDir {
    Local,
    /// A Dockerfile alone (stdin or a URL), beside an empty context.
    Dockerfile { _dir: tempfile::TempDir },
    Fetched { _fetched: Fetched },
}

/// The context directory and Dockerfile of `PATH|URL|-`, as buildx reads
/// them: a directory; a git repository (`URL#REF:SUBDIR`); an http(s) URL
/// of a tar archive or a Dockerfile; stdin with a tar archive or a Dockerfile.
/// The commit is a git context's.
fn resolve_context(args: &BuildArgs, cancel: &std::sync::atomic::AtomicBool) -> anyhow::Result<(PathBuf, PathBuf, ContextDir, Option<String>)> {
    let spec = args.context.as_str();
    let remote = if spec == "-" {
        remote_context::from_stdin(std::io::stdin(), cancel)?
    } else if remote_context::is_git(spec) {
        remote_context::Input::Context(remote_context::git_checkout(spec, false, cancel)?)
    } else if spec.starts_with("http://") || spec.starts_with("https://") {
        remote_context::fetch_url(spec, cancel)?
    } else if spec.contains("://") {
        bail!("{spec}: unsupported build context (expected a directory, a git repository, an http(s) URL or -)");
    } else {
        let context = PathBuf::from(spec);
        if !context.is_dir() {
            bail!("{}: the build context is not a directory", context.display());
        }
        let dockerfile = match &args.file {
            Some(f) if f.as_os_str() == "-" => bail!("-f -: reading the Dockerfile from stdin with a context is not supported yet"),
            Some(f) => f.clone(),
            None => context.join("Dockerfile"),
        };
        return Ok((context, dockerfile, ContextDir::Local, None));
    };
    match remote {
        remote_context::Input::Dockerfile(text) => {
            // A Dockerfile alone lives in a private temp dir, with an empty context beside it.
            let dir = tempfile::Builder::new().prefix("kiln-build-").tempdir()?;
            std::fs::write(dir.path().join("Dockerfile"), text)?;
            std::fs::create_dir(dir.path().join("context"))?;
            let (context, dockerfile) = (dir.path().join("context"), dir.path().join("Dockerfile"));
            Ok((context, dockerfile, ContextDir::Dockerfile { _dir: dir }, None))
        }
        remote_context::Input::Context(fetched) => {
            // -f names a file of the fetched context (buildx), never one of the host.
            let dockerfile = match &args.file {
                None => fetched.root.join("Dockerfile"),
                Some(f) => {
                    let rel = f.to_str().filter(|r| !f.is_absolute() && !r.split(['/', '\\']).any(|p| p == ".."));
                    let rel = rel.with_context(|| format!("-f {}: with a remote or stdin context, -f is a path inside it", f.display()))?;
                    fetched.root.join(rel)
                }
            };
            if !dockerfile.is_file() {
                bail!("{spec}: the context has no {}", dockerfile.strip_prefix(&fetched.root).unwrap_or(&dockerfile).display());
            }
            let commit = fetched.commit.clone();
            Ok((fetched.root.clone(), dockerfile, ContextDir::Fetched { _fetched: fetched }, commit))
        }
    }
}

/// SOURCE_DATE_EPOCH from the environment or `--build-arg`, as buildx reads it.
fn source_date_epoch(build_args: &BTreeMap<String, String>) -> anyhow::Result<Option<i64>> {
    let raw = build_args.get("SOURCE_DATE_EPOCH").cloned().or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok());
    match raw.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => Ok(Some(v.parse().with_context(|| format!("SOURCE_DATE_EPOCH={v} is not a number of seconds"))?)),
    }
}

pub fn run(args: BuildArgs, cancel: &'static std::sync::atomic::AtomicBool) -> anyhow::Result<ExitCode> {
    let call = super::call::Call::from_flags(args.call.as_deref(), args.check)?;
    if call != super::call::Call::Build {
        let (_context, dockerfile, _context_dir, _) = resolve_context(&args, cancel)?;
        return super::call::run(call, &dockerfile, args.target.as_deref(), &parse_build_args(&args.build_args)?);
    }
    let network_none = match args.network.as_str() {
        "default" => false,
        "none" => true,
        other => bail!("--network {other}: expected default or none"),
    };
    let run_options = RunOptions::from_flags(&args.add_host, args.shm_size.as_deref(), &args.ulimit)
        .and_then(|o| o.with_ssh(&args.ssh, std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from)))
        .map_err(anyhow::Error::msg)?;
    let tags: Vec<String> = args
        .tags
        .iter()
        .map(|t| Reference::parse(t).map(|r| r.to_string()).with_context(|| format!("--tag {t}: invalid reference")))
        .collect::<anyhow::Result<_>>()?;
    let mut outputs: Vec<Output> = args.outputs.iter().map(|o| parse_output(o, &tags)).collect::<anyhow::Result<_>>()?;
    if args.push {
        if tags.is_empty() {
            bail!("--push needs a --tag to push to");
        }
        outputs.push(Output::Image { names: tags.clone(), push: true, by_digest: false, docker_media: false });
    }
    if (args.load || !tags.is_empty()) && !outputs.iter().any(|o| matches!(o, Output::Image { .. })) {
        outputs.push(Output::Image { names: tags.clone(), push: false, by_digest: false, docker_media: false });
    }
    if args.load && !outputs.iter().any(|o| matches!(o, Output::DockerEngine { .. })) {
        outputs.push(Output::DockerEngine { required: false });
    }
    if let Some(Output::Image { push: false, by_digest: true, .. }) = outputs.iter().find(|o| matches!(o, Output::Image { by_digest: true, .. })) {
        bail!("--output push-by-digest=true needs push=true (or type=registry)");
    }
    let cache_to: Vec<CacheExport> =
        args.cache_to.iter().map(|c| cache_exchange::parse_cache_to(c, args.compression)).collect::<Result<_, _>>()?;
    let cache_from: Vec<CacheLocation> = args.cache_from.iter().map(|c| cache_exchange::parse_cache_from(c)).collect::<Result<_, _>>()?;
    check_attestations(&args)?;
    let annotations: Vec<annotations::Annotation> = args.annotations.iter().map(|a| annotations::parse(a)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
    let mut named_contexts = NamedContexts::parse(&args.build_contexts).map_err(anyhow::Error::msg)?;

    // Kept alive for the build: the temp dir a remote or stdin context (or a lone Dockerfile) lives in.
    let (context, dockerfile, _context_dir, commit) = resolve_context(&args, cancel)?;
    let _named_dirs = named_contexts.fetch_remote(cancel)?;
    let build_args = parse_build_args(&args.build_args)?;
    let check_warnings = super::call::build_checks(&dockerfile, &build_args)?;
    let mut platforms: Vec<Platform> = Vec::new();
    for p in &args.platform {
        if !platforms.contains(p) {
            platforms.push(p.clone());
        }
    }
    if platforms.is_empty() {
        platforms.push(Platform::host());
    }
    if platforms.len() == 1 && annotations.iter().any(|a| a.targets.iter().any(|t| *t != Target::Manifest)) {
        bail!("--annotation: index and manifest-descriptor annotations need an index: build for several platforms (--platform a,b)");
    }
    if platforms.len() > 1 && outputs.iter().any(|o| matches!(o, Output::Docker { .. } | Output::DockerEngine { required: true })) {
        bail!("--output type=docker holds one platform; use type=oci for a multi-platform image");
    }
    let registry = args.registry.options();
    let quiet = args.quiet || args.progress == ProgressMode::Quiet;
    let mut mode = if quiet { ProgressMode::Quiet } else { args.progress };
    // The live tty view follows one step at a time; concurrent platforms print plain lines.
    if platforms.len() > 1 && matches!(mode, ProgressMode::Auto | ProgressMode::Tty) {
        mode = ProgressMode::Plain;
    }
    let progress = Arc::new(Mutex::new(Progress::new(mode)));
    let store = Store::open_default().context("opening the image store")?;
    let started = std::time::Instant::now();
    if let Some(commit) = &commit {
        progress.lock().unwrap_or_else(|e| e.into_inner()).note(&format!("context: {} at commit {commit}", args.context));
    }
    // --no-cache ignores imported caches too, as in buildx.
    let imported = if cache_from.is_empty() || args.no_cache {
        ImportedCache::empty()
    } else {
        let (imported, warnings) = ImportedCache::load(&cache_from, &registry, &store, cancel);
        let mut progress = progress.lock().unwrap_or_else(|e| e.into_inner());
        for w in warnings {
            progress.note(&format!("warning: {w}"));
        }
        imported
    };
    let req = BuildRequest {
        dockerfile,
        context,
        target: args.target.clone(),
        source_date_epoch: source_date_epoch(&build_args)?,
        build_args,
        platform: platforms[0].clone(),
        no_cache: args.no_cache,
        pull: args.pull,
        labels: parse_labels(&args.labels)?,
        network_none,
        allow_network_host: args.allow.iter().any(|a| a == "network.host"),
        allow_insecure: args.allow.iter().any(|a| a == "security.insecure"),
        memory_mib: args.memory,
        cpus: args.cpus.unwrap_or_else(|| crate::vm::VmConfig::new(Platform::host()).cpus),
        compression: args.compression,
        registry,
        secrets: parse_secrets(&args.secret)?,
        cache_from: Arc::new(imported),
        inline_cache: cache_to.iter().any(|c| c.location == CacheLocation::Inline),
        named_contexts,
        no_cache_stages: args.no_cache_filter.clone(),
        run_options,
    };
    let mut outcomes = build_platforms(&store, &req, &platforms, &progress, cancel)?;
    for o in &mut outcomes {
        o.manifest = annotations::annotate(&store, &o.manifest, &annotations::select(&annotations, Target::Manifest, Some(&o.platform)))?;
        let mut on_descriptor = o.manifest.annotations().clone().unwrap_or_default();
        on_descriptor.extend(annotations::select(&annotations, Target::ManifestDescriptor, Some(&o.platform)));
        o.manifest.set_annotations((!on_descriptor.is_empty()).then(|| on_descriptor.into_iter().collect()));
    }
    let result = if outcomes.len() == 1 {
        outcomes[0].manifest.clone()
    } else {
        let index = write_index(&store, &outcomes)?;
        annotations::annotate(&store, &index, &annotations::select(&annotations, Target::Index, None))?
    };
    // oci-mediatypes=false: the image the outputs get has Docker media types.
    let result = if outputs.iter().any(|o| matches!(o, Output::Image { docker_media: true, .. })) {
        crate::oci::docker_media::convert(&store, &result)?
    } else {
        result
    };
    // Not locked here: pushes show their transfers through it from other threads.
    let progress = StepLog::new(progress, "");
    deliver(&store, &result, &outcomes, &outputs, &req, &progress, cancel)?;
    export_cache(&store, &outcomes, &cache_to, &outputs, &req, &progress, cancel)?;

    // Like buildx: the image ID is the config digest, or the index digest for several platforms.
    let image_id = if outcomes.len() == 1 { outcomes[0].config_digest.clone() } else { result.digest().to_string() };
    if let Some(path) = &args.iidfile {
        write_atomically(path, image_id.as_bytes())?;
    }
    if let Some(path) = &args.metadata_file {
        let mut meta = serde_json::json!({
            "containerimage.digest": result.digest().to_string(),
            "containerimage.descriptor": result,
            "image.name": image_names(&outputs).join(","),
        });
        if outcomes.len() == 1 {
            meta["containerimage.config.digest"] = outcomes[0].config_digest.clone().into();
        }
        write_atomically(path, serde_json::to_string_pretty(&meta)?.as_bytes())?;
    }
    let stdout_taken = outputs.iter().any(|o| matches!(o, Output::Tar { dest } | Output::Oci { dest, .. } | Output::Docker { dest } if dest.as_os_str() == "-"));
    if quiet && stdout_taken {
        eprintln!("{image_id}");
    } else if quiet {
        println!("{image_id}");
    } else {
        let steps: usize = outcomes.iter().map(|o| o.steps).sum();
        let cached: usize = outcomes.iter().map(|o| o.cached).sum();
        let vm = if outcomes.iter().any(|o| o.vm_booted) { "" } else { ", no VM booted" };
        let names: Vec<String> = outcomes.iter().map(|o| o.platform.to_string()).collect();
        progress.note(&format!(
            "built {} in {:.1}s: {steps} steps, {cached} cached{vm}; {}",
            names.join(", "),
            started.elapsed().as_secs_f64(),
            result.digest()
        ));
    }
    if !quiet && mode != ProgressMode::RawJson {
        eprint!("{}", super::call::warnings_summary(&check_warnings));
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds every platform, each in its own VM, at most as many at once as
/// the host has cores and memory for. A failure is reported once the builds
/// running beside it end.
fn build_platforms(
    store: &Store,
    req: &BuildRequest,
    platforms: &[Platform],
    progress: &Arc<Mutex<Progress>>,
    cancel: &'static std::sync::atomic::AtomicBool,
) -> anyhow::Result<Vec<BuildOutcome>> {
    if platforms.len() == 1 {
        return Ok(vec![Builder::new(store, progress.clone(), "", cancel, req).build()?]);
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory_slots = host_memory_mib().map(|m| (m / req.memory_mib.max(256)) as usize).unwrap_or(1);
    let parallel = cores.min(memory_slots).clamp(1, platforms.len());
    let mut outcomes: Vec<Option<BuildOutcome>> = vec![None; platforms.len()];
    for chunk in (0..platforms.len()).collect::<Vec<_>>().chunks(parallel) {
        let results: Vec<(usize, Result<BuildOutcome, crate::engine::BuildError>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let req = BuildRequest { platform: platforms[i].clone(), ..req.clone() };
                    let progress = progress.clone();
                    let prefix = format!("{} ", platforms[i]);
                    scope.spawn(move || (i, Builder::new(store, progress, &prefix, cancel, &req).build()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a build thread panicked")).collect()
        });
        for (i, result) in results {
            let outcome = result.with_context(|| format!("building {}", platforms[i]))?;
            outcomes[i] = Some(outcome);
        }
    }
    Ok(outcomes.into_iter().map(|o| o.expect("every platform was built")).collect())
}

#[cfg(target_os = "linux")]
fn host_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? / 1024)
}

#[cfg(not(target_os = "linux"))]
fn host_memory_mib() -> Option<u64> {
    None
}

/// One OCI index over the per-platform manifests.
fn write_index(store: &Store, outcomes: &[BuildOutcome]) -> anyhow::Result<crate::oci::Descriptor> {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::media::OCI_INDEX,
        "manifests": outcomes.iter().map(|o| &o.manifest).collect::<Vec<_>>(),
    });
    Ok(store.put_json(&index, crate::oci::MediaType::ImageIndex)?)
}

/// Loads, exports and pushes the built image. Tags are set only here, after
/// the whole build succeeded.
fn deliver(
    store: &Store,
    image: &crate::oci::Descriptor,
    outcomes: &[BuildOutcome],
    outputs: &[Output],
    req: &BuildRequest,
    progress: &StepLog,
    cancel: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    // Nothing is tagged, pushed or exported once the user has interrupted.
    crate::cancel::check(cancel)?;
    let mut runtime = None;
    for output in outputs {
        match output {
            Output::Image { names, push, by_digest, .. } => {
                if !by_digest {
                    for name in names {
                        store.tag(name, image)?;
                        progress.note(&format!("naming to {name}"));
                    }
                }
                if *push {
                    let rt = match &mut runtime {
                        Some(rt) => rt,
                        None => runtime.insert(crate::cancel::runtime()?),
                    };
                    for name in names {
                        let mut dest = Reference::parse(name)?;
                        if *by_digest {
                            dest.tag = None;
                        }
                        let report = progress.step_with_id(&format!("pushing {dest}"), |id| {
                            let observed = Client::new(req.registry.clone())?.with_observer(progress.transfers(id));
                            let pushed = crate::cancel::block_on(rt, cancel, observed.push(store, image, &dest, &PushOptions::default()))?;
                            anyhow::Ok(pushed?)
                        })?;
                        if *by_digest {
                            progress.note(&format!("pushed {}@{}", dest.name(), report.digest));
                        } else {
                            progress.note(&format!("pushed {dest} ({})", report.digest));
                        }
                    }
                }
            }
            Output::Oci { dest, tar } => {
                let format = if *tar { Format::OciTar } else { Format::OciDir };
                export(store, image, format, dest, outputs, cancel)?;
                progress.note(&format!("exported an OCI layout to {}", dest.display()));
            }
            Output::Docker { dest } => {
                export(store, image, Format::DockerArchive, dest, outputs, cancel)?;
                progress.note(&format!("exported a Docker archive to {}", dest.display()));
            }
            Output::DockerEngine { required } => {
                if outcomes.len() > 1 {
                    // Only reachable through --load: type=docker with several platforms is refused up front.
                    progress.note("not loaded into Docker: a Docker archive holds one platform (the image is in kiln's store)");
                    continue;
                }
                match docker_engine::load(store, &export_entry(image, outputs), cancel) {
                    Ok(said) => progress.note(&format!("loaded into Docker: {said}")),
                    Err(e) if *required => return Err(anyhow::Error::new(e).context("--output type=docker")),
                    Err(e) => progress.note(&format!("not loaded into Docker ({e}); the image is in kiln's store: kiln images")),
                }
            }
            Output::Local { dest } => {
                let skipped = fs_export::write_dir(store, &fs_parts(outcomes), dest)?;
                progress.note(&format!("exported the file system to {}", dest.display()));
                if skipped.devices > 0 {
                    progress.note(&format!("skipped {} device nodes and sockets (creating them needs root)", skipped.devices));
                }
            }
            Output::CacheOnly => {}
            Output::Tar { dest } => {
                let parts = fs_parts(outcomes);
                if dest.as_os_str() == "-" {
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    fs_export::write_tar_stream(store, &parts, req.source_date_epoch, &mut out)?;
                    std::io::Write::flush(&mut out)?;
                } else {
                    let tmp = layout::export_temp_file(dest).with_context(|| format!("writing {}", dest.display()))?;
                    let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
                    fs_export::write_tar_stream(store, &parts, req.source_date_epoch, &mut out)?;
                    std::io::Write::flush(&mut out).with_context(|| format!("writing {}", dest.display()))?;
                    drop(out);
                    tmp.persist(dest).with_context(|| format!("writing {}", dest.display()))?;
                    progress.note(&format!("exported the file system as a tar to {}", dest.display()));
                }
            }
        }
    }
    Ok(())
}

/// Writes each `--cache-to`: the records of the image's steps, or of every
/// step with `mode=max`. Layers a push just sent to the same registry are
/// mounted from there, not uploaded again.
fn export_cache(
    store: &Store,
    outcomes: &[BuildOutcome],
    exports: &[CacheExport],
    outputs: &[Output],
    req: &BuildRequest,
    progress: &StepLog,
    cancel: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let pushed = outputs.iter().find_map(|o| match o {
        Output::Image { names, push: true, .. } => names.first().and_then(|n| Reference::parse(n).ok()),
        _ => None,
    });
    for export in exports {
        let mut records: Vec<CacheRecord> = Vec::new();
        for o in outcomes {
            let of_outcome = if export.mode == CacheMode::Max { &o.all_records } else { &o.image_records };
            for r in of_outcome {
                if !records.iter().any(|x| x.key == r.key) {
                    records.push(r.clone());
                }
            }
        }
        match cache_exchange::export(store, &records, export, &req.registry, pushed.as_ref(), progress, cancel) {
            Ok(digest) => progress.note(&format!("exported the build cache to {} ({} records, {digest})", export.location, records.len())),
            Err(e) if export.ignore_error => progress.note(&format!("warning: --cache-to {}: {e}", export.location)),
            Err(e) => bail!("--cache-to {}: {e}", export.location),
        }
    }
    Ok(())
}

/// The images whose file systems a local or tar output writes: one at the
/// top, or one folder per platform (`linux_arm64`, as buildx names them).
fn fs_parts(outcomes: &[BuildOutcome]) -> Vec<fs_export::Part<'_>> {
    outcomes
        .iter()
        .map(|o| fs_export::Part {
            prefix: if outcomes.len() == 1 { String::new() } else { o.platform.to_string().replace('/', "_") },
            manifest: &o.manifest,
        })
        .collect()
}

fn export(
    store: &Store,
    image: &crate::oci::Descriptor,
    format: Format,
    dest: &Path,
    outputs: &[Output],
    cancel: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let entry = export_entry(image, outputs);
    if dest.as_os_str() == "-" {
        use std::io::IsTerminal;
        if format == Format::OciDir {
            bail!("--output type=oci,tar=false writes a directory: give dest=DIR");
        }
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            bail!("refusing to write an image archive to a terminal: redirect the output or give dest=FILE");
        }
        layout::export_to_writer(store, &[entry], format, None, &mut stdout.lock(), cancel)?;
    } else {
        layout::export(store, &[entry], format, dest, None, true, cancel)?;
    }
    Ok(())
}

/// The image as an export names it: after the first name it is tagged as.
fn export_entry(image: &crate::oci::Descriptor, outputs: &[Output]) -> ExportEntry {
    let name = outputs.iter().find_map(|o| match o {
        Output::Image { names, .. } => names.first().cloned(),
        _ => None,
    });
    let ref_name = name.as_ref().and_then(|n| Reference::parse(n).ok()).and_then(|r| r.tag).or_else(|| Some("latest".into()));
    ExportEntry { descriptor: image.clone(), ref_name, repo_tag: name }
}

/// The names the image was tagged or pushed as, for `--metadata-file`.
fn image_names(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Image { names, .. } => Some(names.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    crate::dirs::write_atomically(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse_like_buildx() {
        let tags = vec!["docker.io/library/x:latest".to_string()];
        assert_eq!(parse_output("type=oci,dest=out.tar", &tags).unwrap(), Output::Oci { dest: "out.tar".into(), tar: true });
        assert_eq!(parse_output("type=oci,dest=d,tar=false", &tags).unwrap(), Output::Oci { dest: "d".into(), tar: false });
        assert_eq!(parse_output("type=image,push=true", &tags).unwrap(), Output::Image { names: tags.clone(), push: true, by_digest: false, docker_media: false });
        assert_eq!(
            parse_output("type=registry,name=a/b:c", &tags).unwrap(),
            Output::Image { names: vec!["a/b:c".into()], push: true, by_digest: false, docker_media: false }
        );
        assert!(parse_output("type=oci", &tags).unwrap_err().to_string().contains("dest="));
        assert!(parse_output("type=bogus,dest=x", &tags).is_err());
        assert!(parse_output("type=image", &[]).is_err());
        // Several names: quoted as CSV, or name= repeated; a bare field is an error, not a lost name.
        let both = Output::Image { names: vec!["a:1".into(), "b:2".into()], push: false, by_digest: false, docker_media: false };
        assert_eq!(parse_output(r#"type=image,"name=a:1,b:2""#, &tags).unwrap(), both);
        assert_eq!(parse_output("type=image,name=a:1,name=b:2", &tags).unwrap(), both);
        assert!(parse_output("type=image,name=a:1,b:2", &tags).unwrap_err().to_string().contains("quote"));
        assert_eq!(parse_output("./out", &tags).unwrap(), Output::Local { dest: "./out".into() });
        assert_eq!(parse_output("-", &tags).unwrap(), Output::Tar { dest: "-".into() });
        assert_eq!(parse_output("type=local,dest=d", &tags).unwrap(), Output::Local { dest: "d".into() });
        // type=docker without dest goes to a Docker engine; oci-mediatypes=false asks for Docker types.
        assert_eq!(parse_output("type=docker", &tags).unwrap(), Output::DockerEngine { required: true });
        assert_eq!(parse_output("type=cacheonly", &tags).unwrap(), Output::CacheOnly);
        assert_eq!(parse_output("type=docker,dest=x.tar", &tags).unwrap(), Output::Docker { dest: "x.tar".into() });
        assert_eq!(
            parse_output("type=registry,oci-mediatypes=false", &tags).unwrap(),
            Output::Image { names: tags.clone(), push: true, by_digest: false, docker_media: true }
        );
        assert!(parse_output("type=image,oci-mediatypes=maybe", &tags).unwrap_err().to_string().contains("true or false"));
    }

    #[test]
    fn build_args_and_epoch() {
        let args = parse_build_args(&["A=1".into(), "B=".into(), "KILN_SURELY_UNSET_VAR".into()]).unwrap();
        assert_eq!(args.get("A").map(String::as_str), Some("1"));
        assert_eq!(args.get("B").map(String::as_str), Some(""));
        assert!(!args.contains_key("KILN_SURELY_UNSET_VAR"));
        let mut with_epoch = BTreeMap::new();
        with_epoch.insert("SOURCE_DATE_EPOCH".to_string(), "1700000000".to_string());
        assert_eq!(source_date_epoch(&with_epoch).unwrap(), Some(1_700_000_000));
        with_epoch.insert("SOURCE_DATE_EPOCH".to_string(), "soon".to_string());
        assert!(source_date_epoch(&with_epoch).is_err());
    }
}
