//! `kiln images`: the local store's names as a table, as JSON lines
//! (`docker images --format json`'s fields), through a template
//! (`{{.Repository}}:{{.Tag}}`), or only their IDs (`-q`).

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context};
use clap::Args;

use crate::engine::image_config::{parse_rfc3339, rfc3339};
use crate::oci::model::Manifest;
use crate::oci::{Descriptor, Store};

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only image IDs, each once
    #[arg(short, long)]
    pub quiet: bool,
    /// `table` (the default), `json` (one object per line), a template such
    /// as '{{.Repository}}:{{.Tag}}', or `table TEMPLATE` (with a header).
    /// Fields: Repository, Tag, ID, Digest, CreatedAt, CreatedSince, Size,
    /// Platform; `{{json .}}` is the whole row; \t and \n are tab and newline
    #[arg(long)]
    pub format: Option<String>,
}

/// The fields a template may name, with their table headers (docker's).
const FIELDS: [(&str, &str); 8] = [
    ("Repository", "REPOSITORY"),
    ("Tag", "TAG"),
    ("ID", "IMAGE ID"),
    ("Digest", "DIGEST"),
    ("CreatedAt", "CREATED AT"),
    ("CreatedSince", "CREATED"),
    ("Size", "SIZE"),
    ("Platform", "PLATFORM"),
];

/// One name of the store, as `docker images` describes an image.
struct Row {
    /// The name as kiln shows and takes it (`kiln.local/busybox:test`).
    name: String,
    /// Its fields, keyed as docker's JSON keys them.
    fields: BTreeMap<&'static str, String>,
}

pub fn run(args: ImagesArgs) -> anyhow::Result<()> {
    let store = Store::open_default().context("opening the image store")?;
    let format = Format::parse(args.format.as_deref().unwrap_or("table"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let rows: Vec<Row> = store.tags()?.into_iter().map(|t| describe(&store, t.name, &t.descriptor, now)).collect();
    let mut out = std::io::stdout().lock();
    if args.quiet {
        let mut seen = std::collections::HashSet::new();
        for row in &rows {
            if seen.insert(&row.fields["ID"]) {
                writeln!(out, "{}", row.fields["ID"])?;
            }
        }
        return Ok(());
    }
    write!(out, "{}", format.render(&rows))?;
    Ok(())
}

fn describe(store: &Store, name: String, descriptor: &Descriptor, now: i64) -> Row {
    let size = store.closure(descriptor).map(|c| c.iter().map(|d| d.size()).sum::<u64>()).unwrap_or(0);
    // An index's platforms and creation time are its images'.
    let (images, damage): (Vec<crate::oci::Image>, _) = match store.read_manifest(descriptor) {
        Ok((Manifest::Index(i), _)) => (
            i.manifests()
                .iter()
                .filter(|d| crate::oci::model::descriptor_platform(d).is_some_and(|p| p.os != "unknown"))
                .filter_map(|d| store.image(d, None).ok())
                .collect(),
            None,
        ),
        Ok((Manifest::Image(_), _)) => (store.image(descriptor, None).into_iter().collect(), None),
        Err(e) => (Vec::new(), Some(format!("damaged: {e}"))),
    };
    let platforms: Vec<String> = images.iter().map(|i| i.platform().to_string()).chain(damage).collect();
    let created = images.iter().filter_map(|i| i.config.created().as_deref().and_then(parse_rfc3339)).max();
    let (repository, tag) = split_name(&name);
    let digest = descriptor.digest().to_string();
    let mut fields = BTreeMap::new();
    fields.insert("Repository", repository);
    fields.insert("Tag", tag);
    fields.insert("ID", descriptor.digest().digest()[..12].to_string());
    fields.insert("Digest", digest);
    fields.insert("CreatedAt", created.map(|t| rfc3339(t).replace('T', " ").replace('Z', " +0000 UTC")).unwrap_or_default());
    fields.insert("CreatedSince", created.map_or_else(|| "N/A".to_string(), |t| format!("{} ago", human_duration(now - t))));
    fields.insert("Size", human_size(size));
    fields.insert("Platform", platforms.join(","));
    Row { name, fields }
}

/// `docker.io/library/busybox:1` as docker shows it: `busybox` and `1`.
fn split_name(name: &str) -> (String, String) {
    let (rest, pinned) = match name.split_once('@') {
        Some((r, _)) => (r, true),
        None => (name, false),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], rest[last_slash + i + 1..].to_string()),
        None if pinned => (rest, "<none>".to_string()),
        None => (rest, "latest".to_string()),
    };
    let familiar = repo.strip_prefix("docker.io/library/").or_else(|| repo.strip_prefix("docker.io/")).unwrap_or(repo);
    (familiar.to_string(), tag)
}

pub use crate::engine::progress::human_size;

/// docker's (go-units') wording for how long ago: "2 weeks", "About an hour".
fn human_duration(seconds: i64) -> String {
    let (s, m, h) = (seconds, seconds / 60, seconds / 3600);
    match () {
        _ if s < 1 => "Less than a second".into(),
        _ if s == 1 => "1 second".into(),
        _ if s < 60 => format!("{s} seconds"),
        _ if m == 1 => "About a minute".into(),
        _ if m < 60 => format!("{m} minutes"),
        _ if h == 1 => "About an hour".into(),
        _ if h < 48 => format!("{h} hours"),
        _ if h < 24 * 7 * 2 => format!("{} days", h / 24),
        _ if h < 24 * 30 * 2 => format!("{} weeks", h / 24 / 7),
        _ if h < 24 * 365 * 2 => format!("{} months", h / 24 / 30),
        _ => format!("{} years", h / 24 / 365),
    }
}

/// How `kiln images` prints its rows.
#[derive(Debug, PartialEq)]
enum Format {
    /// kiln's own table: full names, digests, platforms, sizes.
    Table,
    Json,
    Template { parts: Vec<Part>, header: bool },
}

#[derive(Debug, PartialEq)]
enum Part {
    Text(String),
    Field(&'static str),
    /// `{{json .}}`: the whole row.
    Json,
}

impl Format {
    fn parse(spec: &str) -> anyhow::Result<Format> {
        let spec = spec.trim();
        if spec == "table" {
            return Ok(Format::Table);
        }
        if spec == "json" {
            return Ok(Format::Json);
        }
        let (template, header) = match spec.strip_prefix("table ") {
            Some(t) => (t.trim(), true),
            None => (spec, false),
        };
        let template = template.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = template.as_str();
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find("}}") else { bail!("--format {spec:?}: a {{{{ without its }}}}") };
            let action = rest[open + 2..open + close].trim();
            parts.push(match action {
                "json ." => Part::Json,
                _ => match action.strip_prefix('.').and_then(|name| FIELDS.iter().find(|(f, _)| *f == name)) {
                    Some((field, _)) => Part::Field(field),
                    None => bail!(
                        "--format: {{{{{action}}}}} is not supported: use {}, {{{{json .}}}}, `json` or `table`",
                        FIELDS.iter().map(|(f, _)| format!("{{{{.{f}}}}}")).collect::<Vec<_>>().join(", ")
                    ),
                },
            });
            rest = &rest[open + close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Format::Template { parts, header })
    }

    fn render(&self, rows: &[Row]) -> String {
        match self {
            Format::Table => {
                let mut text = format!("{:<60} {:<14} {:<28} {:>10}\n", "NAME", "DIGEST", "PLATFORMS", "SIZE");
                for row in rows {
                    let f = &row.fields;
                    text += &format!("{:<60} {:<14} {:<28} {:>10}\n", row.name, f["ID"], f["Platform"], f["Size"]);
                }
                text
            }
            Format::Json => rows.iter().map(|r| format!("{}\n", json_row(r))).collect(),
            Format::Template { parts, header } => {
                let line = |value: &dyn Fn(&Part) -> String| parts.iter().map(value).collect::<String>();
                let mut lines = Vec::new();
                if *header {
                    lines.push(line(&|p| match p {
                        Part::Text(t) => t.clone(),
                        Part::Field(f) => FIELDS.iter().find(|(n, _)| n == f).map_or("", |(_, h)| h).to_string(),
                        Part::Json => String::new(),
                    }));
                }
                for row in rows {
                    lines.push(line(&|p| match p {
                        Part::Text(t) => t.clone(),
                        Part::Field(f) => row.fields[f].clone(),
                        Part::Json => json_row(row).to_string(),
                    }));
                }
                let text = lines.join("\n") + "\n";
                if *header { align_tabs(&text) } else { text }
            }
        }
    }
}

/// A row as `docker images --format json` writes it (keys sorted, as Go's
/// encoder writes a map; VirtualSize is Size, the counts docker leaves
/// unknown are "N/A"), plus kiln's Platform.
fn json_row(row: &Row) -> serde_json::Value {
    let mut map: serde_json::Map<String, serde_json::Value> =
        row.fields.iter().map(|(k, v)| (k.to_string(), v.clone().into())).collect();
    map.insert("VirtualSize".into(), row.fields["Size"].clone().into());
    for unknown in ["Containers", "SharedSize", "UniqueSize"] {
        map.insert(unknown.into(), "N/A".into());
    }
    serde_json::Value::Object(map)
}

/// Lines of tab-separated cells in columns, as docker's tabwriter sets a
/// `table` format (columns at least 10 wide, 3 spaces apart).
fn align_tabs(text: &str) -> String {
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    super::tabwriter::tabwrite(&rows, 3, 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, id: &str) -> Row {
        let (repository, tag) = split_name(name);
        let mut fields = BTreeMap::new();
        for (f, _) in FIELDS {
            fields.insert(f, String::new());
        }
        fields.insert("Repository", repository);
        fields.insert("Tag", tag);
        fields.insert("ID", id.to_string());
        fields.insert("Size", "1.5MB".to_string());
        Row { name: name.to_string(), fields }
    }

    #[test]
    fn names_split_as_docker_shows_them() {
        assert_eq!(split_name("docker.io/library/busybox:1.36"), ("busybox".into(), "1.36".into()));
        assert_eq!(split_name("docker.io/me/app:v1"), ("me/app".into(), "v1".into()));
        assert_eq!(split_name("localhost:5000/app"), ("localhost:5000/app".into(), "latest".into()));
        assert_eq!(split_name("r.example/app@sha256:abc"), ("r.example/app".into(), "<none>".into()));
    }

    #[test]
    fn templates_and_tables() {
        let rows = [row("docker.io/library/busybox:1", "0123456789ab"), row("kiln.local/a-long-name:v2", "ba9876543210")];
        let f = Format::parse("{{.Repository}}:{{.Tag}} {{ .ID }}").unwrap();
        assert_eq!(f.render(&rows), "busybox:1 0123456789ab\nkiln.local/a-long-name:v2 ba9876543210\n");
        let f = Format::parse(r"table {{.Repository}}\t{{.Tag}}\t{{.Size}}").unwrap();
        assert_eq!(
            f.render(&rows),
            "REPOSITORY               TAG       SIZE\nbusybox                  1         1.5MB\nkiln.local/a-long-name   v2        1.5MB\n"
        );
        let err = Format::parse("{{.Nope}}").unwrap_err().to_string();
        assert!(err.contains("{{.Nope}}") && err.contains("{{.Repository}}"), "{err}");
        assert!(Format::parse("{{.Tag").is_err());
        let json: serde_json::Value = serde_json::from_str(Format::parse("{{json .}}").unwrap().render(&rows[..1]).trim()).unwrap();
        assert_eq!(json["Repository"], "busybox");
    }

    #[test]
    fn durations_read_like_dockers() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(45), "45 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(3 * 3600), "3 hours");
        assert_eq!(human_duration(15 * 86_400), "2 weeks");
        assert_eq!(human_duration(3 * 365 * 86_400), "3 years");
    }
}
