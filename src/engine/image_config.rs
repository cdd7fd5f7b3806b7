//! The image config a build produces: Docker's config JSON (a superset of
//! OCI's: `Healthcheck`, `OnBuild` and `Shell` live only in Docker's), with
//! fields kiln does not know kept as they came from the base image.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dockerfile::instructions::{Healthcheck, InstructionKind, KeyValue};
use crate::dockerfile::ShellOrExec;
use crate::platform::Platform;

/// The runtime part (`config` in the JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub exposed_ports: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub volumes: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub on_build: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub shell: Vec<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
    /// Whether this stage set CMD itself (then ENTRYPOINT keeps it); not stored.
    #[serde(skip)]
    pub cmd_set: bool,
    /// Where each name sits in `env`, for [`RunConfig::env_set`]: an image
    /// may set thousands of variables, and a scan per ENV made a long
    /// Dockerfile quadratic. Not stored.
    #[serde(skip)]
    env_index: EnvIndex,
}

/// A cache of `KEY=value` positions in an env list, rebuilt when the list's
/// length changed behind its back (after parsing, or a direct edit of the
/// public list; edit it through [`RunConfig::env_set`]). Two configs are
/// equal whatever their caches hold.
#[derive(Debug, Clone, Default)]
struct EnvIndex {
    positions: std::collections::HashMap<String, usize>,
    /// `env.len()` when the positions were made.
    len: usize,
}

impl PartialEq for EnvIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

impl EnvIndex {
    /// The position of `key` in `env`.
    fn find(&mut self, env: &[String], key: &str) -> Option<usize> {
        if self.len != env.len() {
            self.positions.clear();
            for (i, e) in env.iter().enumerate() {
                // The first of duplicate names is the one env_get reads.
                self.positions.entry(env_key(e).to_string()).or_insert(i);
            }
            self.len = env.len();
        }
        self.positions.get(key).copied().filter(|&i| env.get(i).is_some_and(|e| env_key(e) == key))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// Durations in nanoseconds, as Docker stores them; 0 = inherit the default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The whole config blob.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub author: String,
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub history: Vec<History>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl ImageConfigFile {
    /// The config of `FROM scratch`.
    pub fn scratch(platform: &Platform) -> Self {
        ImageConfigFile {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            config: RunConfig { env: vec![DEFAULT_PATH_ENV.to_string()], ..Default::default() },
            rootfs: RootFs { kind: "layers".into(), diff_ids: Vec::new() },
            ..Default::default()
        }
    }
}

/// What BuildKit puts in an image whose base sets no PATH.
pub const DEFAULT_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl RunConfig {
    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.env.iter().find_map(|e| e.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    pub fn env_set(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self.env_index.find(&self.env, key) {
            Some(i) => self.env[i] = entry,
            None => {
                self.env_index.positions.insert(key.to_string(), self.env.len());
                self.env.push(entry);
                self.env_index.len = self.env.len();
            }
        }
    }

    /// `(name, value)` pairs of ENV, for the Dockerfile evaluator.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect()
    }

    /// The stage's SHELL (Docker's default when unset).
    pub fn shell_or_default(&self) -> Vec<String> {
        if self.shell.is_empty() {
            vec!["/bin/sh".into(), "-c".into()]
        } else {
            self.shell.clone()
        }
    }

    /// The argv for a shell- or exec-form command, as Docker forms it.
    pub fn command_argv(&self, cmd: &ShellOrExec) -> Vec<String> {
        match cmd {
            ShellOrExec::Exec(argv) => argv.clone(),
            ShellOrExec::Shell(line) => {
                let mut argv = self.shell_or_default();
                argv.push(line.clone());
                argv
            }
        }
    }

    /// Applies an instruction that only changes the config (ENV, LABEL, CMD,
    /// ...); returns Ok(false) for any other instruction.
    pub fn apply(&mut self, kind: &InstructionKind) -> Result<bool, String> {
        match kind {
            InstructionKind::Env(kvs) => self.apply_env(kvs),
            InstructionKind::Label(kvs) => self.apply_labels(kvs),
            InstructionKind::Expose(ports) => self.apply_expose(ports)?,
            InstructionKind::Volume(v) => self.apply_volumes(v),
            InstructionKind::User(u) => self.user = u.clone(),
            InstructionKind::StopSignal(s) => self.stop_signal = s.clone(),
            InstructionKind::Healthcheck(h) => self.apply_healthcheck(h),
            InstructionKind::Shell(argv) => self.shell = argv.clone(),
            InstructionKind::Cmd(c) => self.apply_cmd(c),
            InstructionKind::Entrypoint(c) => self.apply_entrypoint(c),
            InstructionKind::Onbuild(t) => self.on_build.push(t.clone()),
            InstructionKind::Workdir(dir) => self.apply_workdir(dir),
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub fn apply_env(&mut self, kvs: &[KeyValue]) {
        for kv in kvs {
            self.env_set(&kv.key, &kv.value);
        }
    }

    pub fn apply_labels(&mut self, kvs: &[KeyValue]) {
        for kv in kvs {
            self.labels.insert(kv.key.clone(), kv.value.clone());
        }
    }

    /// EXPOSE: `80`, `80/udp`, `8000-8002` (ranges expand as Docker does).
    pub fn apply_expose(&mut self, ports: &[String]) -> Result<(), String> {
        for p in ports {
            let (range, proto) = match p.split_once('/') {
                Some((r, proto)) => (r, proto.to_ascii_lowercase()),
                None => (p.as_str(), "tcp".to_string()),
            };
            if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                return Err(format!("invalid protocol {proto:?} in EXPOSE {p}"));
            }
            let parse = |s: &str| s.parse::<u16>().map_err(|_| format!("invalid port {s:?} in EXPOSE {p}"));
            let (lo, hi) = match range.split_once('-') {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => (parse(range)?, parse(range)?),
            };
            if hi < lo {
                return Err(format!("invalid port range in EXPOSE {p}"));
            }
            for port in lo..=hi {
                self.exposed_ports.insert(format!("{port}/{proto}"), Value::Object(Default::default()));
            }
        }
        Ok(())
    }

    pub fn apply_volumes(&mut self, volumes: &[String]) {
        for v in volumes {
            self.volumes.insert(v.clone(), Value::Object(Default::default()));
        }
    }

    /// CMD in shell form runs through the stage's SHELL, as Docker stores it.
    pub fn apply_cmd(&mut self, cmd: &ShellOrExec) {
        self.cmd = Some(self.command_argv(cmd));
        self.cmd_set = true;
    }

    /// ENTRYPOINT also resets a CMD inherited from the base (not one this
    /// stage set), as Docker does.
    pub fn apply_entrypoint(&mut self, cmd: &ShellOrExec) {
        self.entrypoint = Some(self.command_argv(cmd));
        if !self.cmd_set {
            self.cmd = None;
        }
    }

    /// WORKDIR: relative paths join the current one.
    pub fn apply_workdir(&mut self, dir: &str) {
        let joined = if dir.starts_with('/') {
            dir.to_string()
        } else {
            let base = if self.working_dir.is_empty() { "/" } else { self.working_dir.as_str() };
            format!("{}/{dir}", base.trim_end_matches('/'))
        };
        self.working_dir = clean_abs(&joined);
    }

    pub fn apply_healthcheck(&mut self, hc: &Healthcheck) {
        self.healthcheck = Some(match hc {
            Healthcheck::None => HealthConfig { test: vec!["NONE".into()], ..Default::default() },
            Healthcheck::Check { test, interval, timeout, start_period, start_interval, retries } => {
                let nanos = |d: &Option<std::time::Duration>| d.map(|d| d.as_nanos() as u64).unwrap_or(0);
                let test = match test {
                    ShellOrExec::Shell(line) => vec!["CMD-SHELL".into(), line.clone()],
                    ShellOrExec::Exec(argv) => std::iter::once("CMD".to_string()).chain(argv.iter().cloned()).collect(),
                };
                HealthConfig {
                    test,
                    interval: nanos(interval),
                    timeout: nanos(timeout),
                    start_period: nanos(start_period),
                    start_interval: nanos(start_interval),
                    retries: retries.unwrap_or(0) as u64,
                }
            }
        });
    }
}

/// Normalises an absolute path: no `.`/`..`/empty components, no trailing `/`.
pub fn clean_abs(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// RFC 3339 in UTC with second precision, e.g. for `created`.
pub fn rfc3339(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// The inverse of [`rfc3339`], for any RFC 3339 time (fractions of a
/// second dropped, offsets applied): seconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || time.len() < 8 {
        return None;
    }
    let (clock, zone) = time.split_at(8);
    let mut hms = clock.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (hms.next()??, hms.next()??, hms.next()??);
    let zone = zone.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = match zone.chars().next()? {
                '+' => 1,
                '-' => -1,
                _ => return None,
            };
            let (oh, om) = zone[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    Some(days_from_civil(y, m, d) * 86_400 + h * 3600 + min * 60 + s - offset)
}

/// A proleptic Gregorian date to days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        for t in [0, 1_700_000_000, 951_782_400, -86_401, 4_102_444_799] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(parse_rfc3339("2023-11-14T23:13:20.123456789+01:00"), Some(1_700_000_000));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn entrypoint_resets_only_an_inherited_cmd_and_shell_form_uses_shell() {
        let mut c = RunConfig { shell: vec!["/bin/bash".into(), "-c".into()], ..Default::default() };
        c.apply_cmd(&ShellOrExec::Shell("echo hi".into()));
        assert_eq!(c.cmd.as_deref().unwrap(), ["/bin/bash", "-c", "echo hi"]);
        c.apply_entrypoint(&ShellOrExec::Exec(vec!["/app".into()]));
        assert_eq!(c.cmd.as_deref().unwrap(), ["/bin/bash", "-c", "echo hi"], "set in this stage: kept");
        assert_eq!(c.entrypoint.as_deref().unwrap(), ["/app"]);
        let mut inherited: RunConfig = serde_json::from_str(r#"{"Cmd":["bash"]}"#).unwrap();
        inherited.apply_entrypoint(&ShellOrExec::Exec(vec!["/app".into()]));
        assert_eq!(inherited.cmd, None, "inherited from the base: reset");
    }

    #[test]
    fn workdir_joins_and_cleans() {
        let mut c = RunConfig::default();
        c.apply_workdir("app");
        assert_eq!(c.working_dir, "/app");
        c.apply_workdir("../srv/./x/");
        assert_eq!(c.working_dir, "/srv/x");
        c.apply_workdir("/abs");
        assert_eq!(c.working_dir, "/abs");
    }

    #[test]
    fn expose_ranges_and_protocols() {
        let mut c = RunConfig::default();
        c.apply_expose(&["80".into(), "53/UDP".into(), "8000-8001".into()]).unwrap();
        let keys: Vec<&str> = c.exposed_ports.keys().map(String::as_str).collect();
        assert_eq!(keys, ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        assert!(c.apply_expose(&["80/foo".into()]).is_err());
        assert!(c.apply_expose(&["x".into()]).is_err());
    }

    #[test]
    fn keeps_unknown_fields_and_reads_null_lists() {
        let json = r#"{"architecture":"arm64","os":"linux","config":{"Env":null,"Cmd":["bash"],"Foo":1},
            "rootfs":{"type":"layers","diff_ids":[]},"history":null,"moby.x":"y"}"#;
        let c: ImageConfigFile = serde_json::from_str(json).unwrap();
        assert!(c.config.env.is_empty());
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["config"]["Foo"], 1);
        assert_eq!(back["moby.x"], "y");
        assert_eq!(back["config"]["Cmd"][0], "bash");
    }

    #[test]
    fn env_set_replaces() {
        let mut c = RunConfig::default();
        c.env_set("A", "1");
        c.env_set("B", "2");
        c.env_set("A", "3");
        assert_eq!(c.env, ["A=3", "B=2"]);
        assert_eq!(c.env_get("A"), Some("3"));
        assert_eq!(c.env_get("C"), None);

        // A base image's env (parsed, with a duplicate name), then edits:
        // the first of a duplicate is the one replaced, as env_get reads it.
        let mut c: RunConfig = serde_json::from_str(r#"{"Env":["PATH=/bin","X=1","X=2","Y"]}"#).unwrap();
        c.env_set("X", "9");
        c.env_set("Z", "3");
        c.env_set("PATH", "/usr/bin");
        assert_eq!(c.env, ["PATH=/usr/bin", "X=9", "X=2", "Y", "Z=3"]);
        // An edit of the public list behind the index's back is seen.
        c.env.remove(0);
        c.env_set("Z", "4");
        c.env_set("PATH", "/sbin");
        assert_eq!(c.env, ["X=9", "X=2", "Y", "Z=4", "PATH=/sbin"]);
        assert_eq!(c, RunConfig { env: c.env.clone(), ..Default::default() }, "the index takes no part in equality");
    }
}
