//! `kiln completion SHELL` and `kiln man`: shell completion scripts and
//! man pages generated from the command definitions, so they never drift.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use clap_complete::Shell;

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// bash, zsh, fish, powershell or elvish
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write kiln.1 and one page per subcommand (kiln-build.1, kiln-imagetools-create.1, ...)
    /// into this directory; without it, kiln.1 goes to standard output
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn completion(args: CompletionArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = super::command();
    clap_complete::generate(args.shell, &mut cmd, "kiln", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = super::command();
    // Settles bin names and propagated flags (--help, --version) into every subcommand.
    cmd.build();
    match args.dir {
        None => std::io::stdout().write_all(&page(&cmd)?).context("writing the man page")?,
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let written = write_pages(&cmd, "", &dir)?;
            eprintln!("wrote {written} man pages to {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cmd`'s man page: clap_mangen's, with the help's examples under
/// EXAMPLES (clap_mangen would print them under EXTRA).
fn page(cmd: &clap::Command) -> anyhow::Result<Vec<u8>> {
    let examples = cmd.get_after_help().map(|h| h.to_string());
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone().after_help(None::<&str>)).render(&mut page)?;
    let mut page = String::from_utf8(page)?;
    if let Some(examples) = examples {
        let body = examples.strip_prefix(super::examples::HEADING).unwrap_or(&examples);
        let mut roff = clap_mangen::roff::Roff::new();
        roff.control("SH", ["EXAMPLES"]).control("nf", []);
        for line in body.lines().filter(|l| !l.is_empty()) {
            roff.text([clap_mangen::roff::roman(line)]);
        }
        roff.control("fi", []);
        let at = page.find(".SH VERSION").unwrap_or(page.len());
        page.insert_str(at, &roff.to_roff());
    }
    Ok(page.into_bytes())
}

/// Writes `cmd`'s page as `<prefix>-<name>.1` and those of its visible
/// subcommands below it; returns how many pages were written.
fn write_pages(cmd: &clap::Command, prefix: &str, dir: &Path) -> anyhow::Result<usize> {
    let name = match prefix {
        "" => cmd.get_name().to_string(),
        _ => format!("{prefix}-{}", cmd.get_name()),
    };
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page(&cmd.clone().name(name.clone()))?).with_context(|| format!("writing {}", path.display()))?;
    let mut written = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        written += write_pages(sub, &name, dir)?;
    }
    Ok(written)
}
