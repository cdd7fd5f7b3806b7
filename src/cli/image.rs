//! Image commands: `kiln images`, `rmi`, `tag`, `prune`, `inspect`, `pull`,
//! `push`, `login`, `logout`, `save`, `load`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::engine::layer_images::LayerImages;
use crate::engine::progress::{Progress, ProgressMode, StepLog};
use crate::oci::layout::{self, ExportEntry, Format};
use crate::oci::{Descriptor, Store};
use crate::platform::Platform;
use crate::registry::{Client, ClientOptions, Credentials, DockerConfig, PullOptions, PushOptions, Reference};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images in the local store
    Images(super::images::ImagesArgs),
    /// Remove image tags (and blobs nothing else uses)
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Give an image another name
    Tag { source: String, target: String },
    /// Delete blobs no tag uses
    Prune,
    /// Print an image's config (or manifest) as JSON
    Inspect {
        image: String,
        /// For an index: which platform's image
        #[arg(long)]
        platform: Option<Platform>,
        /// Print the manifest (or index) instead of the config
        #[arg(long)]
        manifest: bool,
    },
    /// Pull an image from a registry
    Pull {
        reference: String,
        /// Platform to pull from a multi-platform image (default: the host's)
        #[arg(long)]
        platform: Option<Platform>,
        /// Pull every platform of an index and keep the index
        #[arg(long, conflicts_with = "platform")]
        all_platforms: bool,
        #[command(flatten)]
        display: TransferDisplayArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Push an image to a registry
    Push {
        /// Local image name
        image: String,
        /// Destination reference (default: the image's own name)
        destination: Option<String>,
        /// Mount blobs from this repository on the same registry instead of uploading them
        #[arg(long)]
        mount_from: Option<String>,
        #[command(flatten)]
        display: TransferDisplayArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Log in to a registry; stores credentials in the Docker config (or $REGISTRY_AUTH_FILE)
    Login {
        /// Registry host (default: docker.io)
        registry: Option<String>,
        #[arg(short, long)]
        username: String,
        /// Password (prefer --password-stdin: arguments are visible to other users)
        #[arg(short, long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from standard input
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        registry_args: RegistryArgs,
    },
    /// Remove stored credentials for a registry
    Logout {
        /// Registry host (default: docker.io)
        registry: Option<String>,
        /// Credentials file (default: $REGISTRY_AUTH_FILE, else $DOCKER_CONFIG/config.json or ~/.docker/config.json)
        #[arg(long)]
        auth_file: Option<PathBuf>,
    },
    /// Write images as an OCI layout (dir or tar) or a Docker archive
    Save {
        #[arg(required = true)]
        images: Vec<String>,
        /// Where to write (default or `-`: standard output, for a tar format)
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// oci-dir, oci (tar) or docker (tar for `docker load`)
        #[arg(long, default_value = "oci")]
        format: Format,
        /// For docker archives of multi-platform images: which platform
        #[arg(long)]
        platform: Option<Platform>,
    },
    /// Import images from an OCI layout directory, or an OCI or Docker
    /// archive (a tar file; standard input when omitted or `-`)
    Load {
        /// Layout directory or archive file (default: standard input)
        #[arg(short = 'i', long = "input")]
        input: Option<PathBuf>,
        /// The same as --input
        #[arg(conflicts_with = "input")]
        dir: Option<PathBuf>,
        /// Only the image with this org.opencontainers.image.ref.name
        #[arg(long)]
        r#ref: Option<String>,
        /// Name for the imported image (default: its ref name)
        #[arg(long)]
        name: Option<String>,
    },
}

/// How kiln reaches registries; shared by the image commands and `build`.
#[derive(Debug, Clone, Args)]
pub struct RegistryConnectionArgs {
    /// Allow plain HTTP to this registry (host[:port]); loopback always may
    #[arg(long = "insecure-registry", env = "KILN_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub insecure: Vec<String>,
    /// Extra CA certificate (PEM) to trust for every registry (per registry: certs.d, see README)
    #[arg(long = "ca-cert", env = "KILN_CA_CERTS", value_delimiter = ',')]
    pub ca_certs: Vec<PathBuf>,
    /// Do not verify the TLS certificate of this registry (host[:port])
    #[arg(long = "insecure-skip-tls-verify", env = "KILN_INSECURE_SKIP_TLS_VERIFY", value_delimiter = ',', value_name = "REGISTRY")]
    pub skip_tls_verify: Vec<String>,
}

impl RegistryConnectionArgs {
    /// Client options with these settings and the default credential files.
    pub(crate) fn options(&self) -> ClientOptions {
        ClientOptions {
            insecure_registries: self.insecure.clone(),
            ca_certs: self.ca_certs.clone(),
            skip_tls_verify: self.skip_tls_verify.clone(),
            ..Default::default()
        }
    }
}

/// How `pull` and `push` show their blobs moving, as `build` does.
#[derive(Debug, Args)]
pub struct TransferDisplayArgs {
    /// Progress display: auto, tty (bars), plain (a line per blob done), quiet or rawjson (default: $BUILDKIT_PROGRESS, else auto)
    #[arg(long, default_value = "auto", env = "BUILDKIT_PROGRESS", hide_env = true)]
    progress: ProgressMode,
    /// Print only the image's name once done
    #[arg(short, long)]
    quiet: bool,
}

impl TransferDisplayArgs {
    /// Runs `work` (a pull or push with `client`) as a step named `name`,
    /// its transfers shown on stderr, stopped by Ctrl-C.
    fn run<T>(&self, name: &str, client: Client, work: impl AsyncFnOnce(&Client) -> Result<T, crate::registry::RegistryError>) -> anyhow::Result<T> {
        let mode = if self.quiet { ProgressMode::Quiet } else { self.progress };
        let log = StepLog::new(Arc::new(Mutex::new(Progress::new(mode))), "");
        let runtime = crate::cancel::runtime()?;
        let cancel = super::signals::install();
        log.step_with_id(name, |id| {
            let client = client.with_observer(log.transfers(id));
            Ok(crate::cancel::block_on(&runtime, cancel, work(&client))??)
        })
    }
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    #[command(flatten)]
    connection: RegistryConnectionArgs,
    /// Credentials file, used alone (default: $REGISTRY_AUTH_FILE, docker's config.json, podman's auth.json; see README)
    #[arg(long)]
    auth_file: Option<PathBuf>,
}

impl RegistryArgs {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let mut opts = self.connection.options();
        if let Some(file) = &self.auth_file {
            opts.auth_files = vec![file.clone()];
        }
        Ok(Client::new(opts)?)
    }
}

/// The tags `rmi IMAGE` removes: IMAGE itself when it is a name, else (a
/// digest or its prefix, as `kiln images` shows it) the one name that holds
/// that image. Like `docker rmi`, an image with several names is removed
/// name by name.
fn names_to_remove(store: &Store, image: &str) -> anyhow::Result<Vec<String>> {
    let (name, descriptor) = resolve(store, image)?;
    let tags = store.tags()?;
    if tags.iter().any(|t| t.name == name) {
        return Ok(vec![name]);
    }
    let names: Vec<String> = tags.into_iter().filter(|t| t.descriptor.digest() == descriptor.digest()).map(|t| t.name).collect();
    match names.len() {
        0 => bail!("{image}: no name refers to this image; `kiln prune` deletes untagged images"),
        1 => Ok(names),
        _ => bail!("{image} has several names ({}); remove them by name", names.join(", ")),
    }
}

fn resolve(store: &Store, name: &str) -> anyhow::Result<(String, Descriptor)> {
    Ok(crate::registry::reference::resolve_local(store, name)?)
}

fn normalize(name: &str) -> anyhow::Result<String> {
    Ok(Reference::parse(name)?.to_string())
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    let store = || Store::open_default().context("opening the image store");
    match cmd {
        ImageCommand::Images(args) => super::images::run(args)?,
        ImageCommand::Rmi { images } => {
            let store = store()?;
            for image in images {
                for name in names_to_remove(&store, &image)? {
                    store.untag(&name)?;
                    println!("Untagged: {name}");
                }
            }
            match store.try_prune()? {
                Some(r) => report_prune(&store, r),
                None => println!("Another kiln process is using the store; run `kiln prune` later to free space"),
            }
        }
        ImageCommand::Tag { source, target } => {
            let store = store()?;
            let (_, d) = resolve(&store, &source)?;
            store.tag(&normalize(&target)?, &d)?;
        }
        ImageCommand::Prune => {
            let store = store()?;
            let r = match store.try_prune()? {
                Some(r) => r,
                None => {
                    eprintln!("Waiting for the other kiln processes using the store to finish...");
                    store.prune()?
                }
            };
            report_prune(&store, r);
        }
        ImageCommand::Inspect { image, platform, manifest } => {
            let store = store()?;
            let (_, d) = resolve(&store, &image)?;
            let bytes = if manifest {
                store.read_manifest(&d)?.1
            } else {
                store.image(&d, platform.as_ref())?.config_bytes
            };
            let value: serde_json::Value = serde_json::from_slice(&bytes)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        ImageCommand::Pull { reference, platform, all_platforms, display, registry } => {
            let reference = Reference::parse(&reference)?;
            let store = store()?;
            let client = registry.client()?;
            let opts = PullOptions { platform, all_platforms };
            let report = display.run(&format!("pulling {reference}"), client, async |c| c.pull(&store, &reference, &opts).await)?;
            if display.quiet {
                println!("{}", report.name);
            } else {
                println!(
                    "Pulled {} ({}): {} blobs, {} downloaded",
                    report.name,
                    report.descriptor.digest(),
                    report.blobs_downloaded,
                    super::images::human_size(report.bytes_downloaded)
                );
            }
        }
        ImageCommand::Push { image, destination, mount_from, display, registry } => {
            let store = store()?;
            let (name, d) = resolve(&store, &image)?;
            let dest = Reference::parse(destination.as_deref().unwrap_or(&name))
                .with_context(|| format!("{name} is not a registry name; give a destination"))?;
            let client = registry.client()?;
            let opts = PushOptions { mount_from };
            let report = display.run(&format!("pushing {dest}"), client, async |c| c.push(&store, &d, &dest, &opts).await)?;
            if display.quiet {
                println!("{dest}");
            } else {
                println!(
                    "Pushed {dest} ({}): {} blobs uploaded ({}), {} mounted, {} already present",
                    report.digest,
                    report.uploaded,
                    super::images::human_size(report.uploaded_bytes),
                    report.mounted,
                    report.skipped
                );
            }
        }
        ImageCommand::Login { registry, username, password, password_stdin, registry_args } => {
            let registry = registry.unwrap_or_else(|| crate::registry::reference::DOCKER_HUB.to_string());
            let registry = registry.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/').to_string();
            let secret = match (password, password_stdin) {
                (Some(p), _) => p,
                (None, true) => {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s).context("reading the password from stdin")?;
                    s.trim_end_matches(['\n', '\r']).to_string()
                }
                (None, false) => bail!("give the password with --password-stdin (or --password)"),
            };
            if secret.is_empty() {
                bail!("the password is empty");
            }
            let creds = Credentials { username, secret };
            let client = registry_args.client()?;
            crate::cancel::runtime()?.block_on(client.check_credentials(&registry, &creds))?;
            let config = DockerConfig::new(registry_args.auth_file.clone().unwrap_or_else(crate::registry::auth::login_auth_file));
            config.store(&registry, &creds)?;
            println!("Login succeeded; credentials stored in {}", config.path().display());
        }
        ImageCommand::Logout { registry, auth_file } => {
            let registry = registry.unwrap_or_else(|| crate::registry::reference::DOCKER_HUB.to_string());
            let config = DockerConfig::new(auth_file.unwrap_or_else(crate::registry::auth::login_auth_file));
            if config.erase(&registry)? {
                println!("Removed credentials for {registry}");
            } else {
                println!("Not logged in to {registry}");
            }
        }
        ImageCommand::Save { images, output, format, platform } => {
            let store = store()?;
            let mut entries = Vec::new();
            for image in &images {
                let (name, descriptor) = resolve(&store, image)?;
                let tag = Reference::parse(&name).ok().and_then(|r| r.tag);
                entries.push(ExportEntry { descriptor, ref_name: tag.or(Some(name.clone())), repo_tag: Some(name) });
            }
            let cancel = super::signals::install();
            match output.filter(|o| o.as_os_str() != "-") {
                Some(output) => {
                    layout::export(&store, &entries, format, &output, platform.as_ref(), true, cancel)?;
                    println!("Wrote {}", output.display());
                }
                None => {
                    use std::io::IsTerminal;
                    if format == Format::OciDir {
                        bail!("--format oci-dir writes a directory: give it with -o DIR");
                    }
                    let stdout = std::io::stdout();
                    if stdout.is_terminal() {
                        bail!("refusing to write an image archive to a terminal: give -o FILE or redirect the output");
                    }
                    layout::export_to_writer(&store, &entries, format, platform.as_ref(), &mut stdout.lock(), cancel)?;
                }
            }
        }
        ImageCommand::Load { input, dir, r#ref, name } => {
            let store = store()?;
            let source = input.or(dir).unwrap_or_else(|| PathBuf::from("-"));
            let from_stdin = source.as_os_str() == "-";
            let base_name = if from_stdin {
                "image".to_string()
            } else {
                let canonical = source.canonicalize().ok();
                let stem = if source.is_dir() { canonical.as_deref().and_then(|d| d.file_name()) } else { source.file_stem() };
                stem.map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_else(|| "image".into())
            };
            let name_for = |ref_name: &str, full_name: Option<&str>| {
                if let Some(n) = &name {
                    return normalize(n).unwrap_or_else(|_| n.clone());
                }
                // The image's full name when the archive or layout records one
                // (kiln save, containerd, Docker); else a bare tag ("latest", "v1")
                // goes under localhost/<layout dir or archive name>, as podman names it.
                let full = match (full_name, ref_name) {
                    (Some(full), _) => full.to_string(),
                    (None, "") => format!("localhost/{base_name}:latest"),
                    (None, r) if r.contains('/') || r.contains(':') => r.to_string(),
                    (None, r) => format!("localhost/{base_name}:{r}"),
                };
                normalize(&full).unwrap_or(full)
            };
            let tagged = if from_stdin {
                crate::oci::archive::import_archive(&store, std::io::stdin().lock(), std::path::Path::new("standard input"), r#ref.as_deref(), name_for)?
            } else if source.is_dir() {
                layout::import_dir(&store, &source, r#ref.as_deref(), name_for)?
            } else {
                let file = std::fs::File::open(&source).with_context(|| format!("opening {}", source.display()))?;
                crate::oci::archive::import_archive(&store, std::io::BufReader::with_capacity(1 << 20, file), &source, r#ref.as_deref(), name_for)?
            };
            if tagged.is_empty() {
                bail!("{}: no image in it has a name (org.opencontainers.image.ref.name or RepoTags); nothing imported", source.display());
            }
            for (n, d) in tagged {
                println!("Loaded {n} ({})", d.digest());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints what a prune freed, after dropping the layer disk images of the
/// blobs it deleted.
fn report_prune(store: &Store, r: crate::oci::store::PruneReport) {
    let (images, image_bytes) = LayerImages::new(&crate::dirs::cache_dir()).prune(store);
    println!("Deleted {} blobs, {}", r.blobs, super::images::human_size(r.bytes));
    if r.partial_files > 0 {
        println!("Deleted {} files of interrupted pulls and builds, {}", r.partial_files, super::images::human_size(r.partial_bytes));
    }
    if images > 0 {
        println!("Deleted {images} cached layer disk images, {}", super::images::human_size(image_bytes));
    }
}
