//! Build progress, shown like BuildKit's: `plain` lines (`#5 [2/4] RUN ...`,
//! `#5 0.52 output`, `#5 DONE 1.2s`, `#5 CACHED`), a `tty` view that shows
//! the running step's last lines live and collapses them when it is done,
//! `quiet`, and `rawjson` for machines: one BuildKit `SolveStatus` per line,
//! as `docker buildx build --progress rawjson` writes them. A failed
//! step ends with BuildKit's `#5 ERROR: ...` and its last output lines in a
//! `------` block (in every mode but rawjson, whose events carry them).
//! Blob pulls and pushes show their bytes as buildx does: bars in the tty
//! view, one `#N sha256:... 45.6MB / 45.6MB 1.2s done` line per blob in
//! plain, `statuses` in rawjson.

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use oci_spec::image::Digest;

use crate::registry::TransferObserver;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Auto,
    Tty,
    Plain,
    Quiet,
    RawJson,
}

impl std::str::FromStr for ProgressMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Self::Auto,
            "tty" => Self::Tty,
            "plain" => Self::Plain,
            "quiet" => Self::Quiet,
            "rawjson" => Self::RawJson,
            _ => return Err(format!("invalid progress mode {s:?}: expected auto, tty, plain, quiet or rawjson")),
        })
    }
}

/// How a step that succeeded ended ([`Progress::fail`] ends one that failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEnd {
    Done,
    Cached,
}

/// Lines of a running step's output the tty view keeps on screen.
const TTY_WINDOW: usize = 6;

/// A partial line longer than this is shown without waiting for its end.
const MAX_PARTIAL: usize = 16 * 1024;

/// Lines of a failed step's output repeated in its error block (BuildKit's).
const ERROR_TAIL: usize = 10;

/// How often the tty view redraws transfer bars, and rawjson reports a
/// transfer's bytes, at most (buildx's 10 times a second).
const REFRESH: Duration = Duration::from_millis(100);

/// Receives build events; writes to stderr (or any writer, for tests).
pub struct Progress {
    mode: ProgressMode,
    out: Box<dyn Write + Send>,
    started: Instant,
    next_id: usize,
    /// The running step (tty view): id, name, start, visible lines.
    live: Option<Live>,
    /// Each step's and stream's unfinished line, with the time it began.
    partial: HashMap<(usize, u8), (Vec<u8>, f64)>,
    /// The steps that have not ended yet.
    running: HashMap<usize, RunningStep>,
    /// Whether the tty view may use colours (not under NO_COLOR).
    color: bool,
    /// Blobs moving, by step and digest, in the order they started.
    transfers: Vec<Transfer>,
    /// Limits the tty view's redraws for transfer bytes.
    redraws: Throttle,
    /// The tty view's width; `None`: the terminal's, asked at each redraw.
    width: Option<usize>,
}

/// A blob pull or push shown under step `step`.
struct Transfer {
    step: usize,
    digest: String,
    total: u64,
    current: u64,
    started: SystemTime,
    began: Instant,
    /// Limits rawjson's statuses for it.
    reports: Throttle,
}

/// Lets something through at most once per `every`.
struct Throttle {
    every: Duration,
    last: Option<Instant>,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Throttle { every, last: None }
    }

    /// Whether `now` may show an update (and, if so, counts it as shown).
    fn ready(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|last| now.saturating_duration_since(last) < self.every) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[derive(Default)]
struct RunningStep {
    name: String,
    /// When it started, for rawjson's `started`.
    started: Option<SystemTime>,
    /// Its last lines (with when they began), for the error block if it fails.
    tail: VecDeque<(f64, String)>,
}

struct Live {
    id: usize,
    name: String,
    started: Instant,
    window: Vec<String>,
    /// Lines currently drawn below the header.
    drawn: usize,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        Self::to_writer(mode, Box::new(std::io::stderr()))
    }

    pub fn to_writer(mode: ProgressMode, out: Box<dyn Write + Send>) -> Self {
        let color = colors_allowed(std::env::var_os("NO_COLOR"));
        Progress {
            mode,
            out,
            started: Instant::now(),
            next_id: 1,
            live: None,
            partial: HashMap::new(),
            running: HashMap::new(),
            color,
            transfers: Vec::new(),
            redraws: Throttle::new(REFRESH),
            width: None,
        }
    }

    /// `code` (an SGR sequence) when colours are on.
    fn sgr(&self, code: &'static str) -> &'static str {
        if self.color { code } else { "" }
    }

    /// Starts a step and returns its number (`#N`).
    pub fn start(&mut self, name: &str) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        self.running.insert(id, RunningStep { name: name.to_string(), started: Some(SystemTime::now()), tail: VecDeque::new() });
        match self.mode {
            ProgressMode::Plain => {
                let _ = writeln!(self.out, "#{id} {name}");
            }
            ProgressMode::Tty => {
                self.finish_live();
                let (bold, reset) = (self.sgr("\x1b[1m"), self.sgr("\x1b[0m"));
                let _ = writeln!(self.out, "{bold}=> {name}{reset}");
                self.live = Some(Live {
                    id,
                    name: name.to_string(),
                    started: Instant::now(),
                    window: Vec::new(),
                    drawn: 0,
                });
            }
            ProgressMode::RawJson => self.vertex(id, serde_json::Map::new()),
            ProgressMode::Quiet | ProgressMode::Auto => {}
        }
        let _ = self.out.flush();
        id
    }

    /// Output of step `id` (any chunking; lines are reassembled where shown).
    pub fn output(&mut self, id: usize, stream: u8, bytes: &[u8]) {
        match self.mode {
            ProgressMode::Plain | ProgressMode::Tty | ProgressMode::Quiet => {
                let now = self.started.elapsed().as_secs_f64();
                let (partial, began) = self.partial.entry((id, stream)).or_insert_with(|| (Vec::new(), now));
                if partial.is_empty() {
                    *began = now;
                }
                partial.extend_from_slice(bytes);
                // Lines are cut at offsets and the rest moved down once, so a
                // chunk of many short lines costs linear time.
                let (mut lines, mut start) = (Vec::new(), 0);
                while let Some(pos) = partial[start..].iter().position(|&b| b == b'\n') {
                    let end = start + pos + 1;
                    lines.push((partial[start..end].to_vec(), *began));
                    *began = now;
                    start = end;
                }
                partial.drain(..start);
                if partial.len() > MAX_PARTIAL {
                    lines.push((std::mem::take(partial), *began));
                }
                for (line, at) in lines {
                    self.show_line(id, &line, at);
                }
            }
            ProgressMode::RawJson => self.json(serde_json::json!({"logs": [{
                "vertex": vertex_digest(id), "stream": stream,
                "data": base64::engine::general_purpose::STANDARD.encode(bytes), "timestamp": rfc3339_nanos(SystemTime::now()),
            }]})),
            ProgressMode::Auto => {}
        }
        let _ = self.out.flush();
    }

    /// Shows one line of step `id`'s output that began at `at` seconds.
    fn show_line(&mut self, id: usize, line: &[u8], at: f64) {
        let Some(text) = settled_line(&String::from_utf8_lossy(line)) else { return };
        if let Some(step) = self.running.get_mut(&id) {
            if step.tail.len() == ERROR_TAIL {
                step.tail.pop_front();
            }
            step.tail.push_back((at, text.clone()));
        }
        match self.mode {
            ProgressMode::Plain => {
                let _ = writeln!(self.out, "#{id} {at:.3} {text}");
            }
            ProgressMode::Tty => {
                if let Some(live) = self.live.as_mut().filter(|l| l.id == id) {
                    live.window.push(text);
                    if live.window.len() > TTY_WINDOW {
                        live.window.remove(0);
                    }
                    self.redraw();
                }
            }
            _ => {}
        }
    }

    /// Shows what is left of step `id`'s unfinished lines.
    fn flush_partial(&mut self, id: usize) {
        let keys: Vec<(usize, u8)> = self.partial.keys().filter(|(step, _)| *step == id).copied().collect();
        for key in keys {
            if let Some((line, at)) = self.partial.remove(&key) {
                if !line.is_empty() {
                    self.show_line(id, &line, at);
                }
            }
        }
    }

    /// Ends step `id`.
    pub fn end(&mut self, id: usize, how: StepEnd, elapsed: Duration) {
        self.flush_partial(id);
        self.transfers.retain(|t| t.step != id);
        let secs = elapsed.as_secs_f64();
        match self.mode {
            ProgressMode::Plain => {
                let _ = match how {
                    StepEnd::Done => writeln!(self.out, "#{id} DONE {secs:.1}s"),
                    StepEnd::Cached => writeln!(self.out, "#{id} CACHED"),
                };
            }
            ProgressMode::Tty => {
                if let Some(live) = self.live.as_ref().filter(|l| l.id == id) {
                    let name = live.name.clone();
                    self.erase_live();
                    // Rewrite the header line in place with the result.
                    let status = match how {
                        StepEnd::Cached => "CACHED".to_string(),
                        StepEnd::Done => format!("{secs:.1}s"),
                    };
                    let _ = write!(self.out, "\x1b[1A\r\x1b[2K=> {name}  {status}\n");
                    self.live = None;
                }
            }
            ProgressMode::RawJson => {
                let mut end = serde_json::Map::new();
                end.insert("completed".into(), rfc3339_nanos(SystemTime::now()).into());
                if how == StepEnd::Cached {
                    end.insert("cached".into(), true.into());
                }
                self.vertex(id, end);
            }
            ProgressMode::Quiet | ProgressMode::Auto => {}
        }
        self.running.remove(&id);
        let _ = self.out.flush();
    }

    /// Ends step `id` as failed because of `message`: BuildKit's
    /// `#N ERROR: message`, then the step's last output lines between
    /// `------` rules (`> [2/3] RUN ...:` first), as buildx prints them.
    pub fn fail(&mut self, id: usize, message: &str, elapsed: Duration) {
        self.flush_partial(id);
        self.transfers.retain(|t| t.step != id);
        if self.mode == ProgressMode::RawJson {
            let mut end = serde_json::Map::new();
            end.insert("completed".into(), rfc3339_nanos(SystemTime::now()).into());
            end.insert("error".into(), message.into());
            self.vertex(id, end);
            self.running.remove(&id);
            let _ = self.out.flush();
            return;
        }
        let RunningStep { name, tail, .. } = self.running.remove(&id).unwrap_or_default();
        let secs = elapsed.as_secs_f64();
        match self.mode {
            ProgressMode::Plain => {
                let _ = writeln!(self.out, "#{id} ERROR: {message}");
            }
            ProgressMode::Tty => {
                if self.live.as_ref().is_some_and(|l| l.id == id) {
                    self.erase_live();
                    let (red, reset) = (self.sgr("\x1b[31m"), self.sgr("\x1b[0m"));
                    let _ = write!(self.out, "\x1b[1A\r\x1b[2K=> {name}  {red}ERROR{reset} {secs:.1}s\n");
                    self.live = None;
                }
                let _ = writeln!(self.out, "ERROR: {message}");
            }
            ProgressMode::Quiet | ProgressMode::Auto | ProgressMode::RawJson => {}
        }
        let mut block = format!("------\n > {name}:\n");
        for (at, line) in &tail {
            block += &format!("{at:.3} {line}\n");
        }
        block += "------";
        let _ = writeln!(self.out, "{block}");
        let _ = self.out.flush();
    }

    /// A one-line note outside any step (warnings, the final result).
    pub fn note(&mut self, text: &str) {
        match self.mode {
            ProgressMode::Quiet | ProgressMode::Auto => {}
            // A warning as BuildKit sends one; other notes as logs of no step.
            ProgressMode::RawJson => {
                let base64 = base64::engine::general_purpose::STANDARD;
                let now = rfc3339_nanos(SystemTime::now());
                match text.strip_prefix("warning: ") {
                    Some(w) => self.json(serde_json::json!({"warnings": [{"level": 1, "short": base64.encode(w)}]})),
                    None => self.json(serde_json::json!({"logs": [{"stream": 2, "data": base64.encode(format!("{text}\n")), "timestamp": now}]})),
                }
            }
            _ => {
                self.finish_live();
                let _ = writeln!(self.out, "{text}");
            }
        }
        let _ = self.out.flush();
    }

    /// Step `id` starts moving blob `digest` of `total` bytes.
    pub fn transfer_started(&mut self, id: usize, digest: &str, total: u64) {
        self.transfers.retain(|t| !(t.step == id && t.digest == digest));
        let now = Instant::now();
        let mut reports = Throttle::new(REFRESH);
        reports.ready(now);
        self.transfers.push(Transfer { step: id, digest: digest.to_string(), total, current: 0, started: SystemTime::now(), began: now, reports });
        match self.mode {
            ProgressMode::Tty => {
                self.redraws.ready(now);
                self.redraw();
            }
            ProgressMode::RawJson => self.status(self.transfers.len() - 1, false),
            _ => {}
        }
        let _ = self.out.flush();
    }

    /// `bytes` more of step `id`'s blob `digest` moved; `rewind_to` first
    /// sets it back (a retried request sends those bytes again).
    pub fn transfer_advanced(&mut self, id: usize, digest: &str, bytes: u64, rewind_to: Option<u64>) {
        let Some(i) = self.transfers.iter().position(|t| t.step == id && t.digest == digest) else { return };
        let transfer = &mut self.transfers[i];
        if let Some(offset) = rewind_to {
            transfer.current = offset.min(transfer.current);
        }
        transfer.current += bytes;
        let now = Instant::now();
        match self.mode {
            ProgressMode::Tty if self.redraws.ready(now) => self.redraw(),
            ProgressMode::RawJson if transfer.reports.ready(now) => self.status(i, false),
            _ => return,
        }
        let _ = self.out.flush();
    }

    /// Step `id`'s blob `digest` has all moved.
    pub fn transfer_finished(&mut self, id: usize, digest: &str) {
        let Some(i) = self.transfers.iter().position(|t| t.step == id && t.digest == digest) else { return };
        let done = self.transfers[i].began.elapsed().as_secs_f64();
        let sizes = format!("{} / {}", human_size(self.transfers[i].current), human_size(self.transfers[i].total));
        match self.mode {
            ProgressMode::Plain => {
                let _ = writeln!(self.out, "#{id} {digest} {sizes} {done:.1}s done");
            }
            ProgressMode::Tty => {
                if let Some(live) = self.live.as_mut().filter(|l| l.id == id) {
                    live.window.push(format!("{} {sizes} {done:.1}s done", short_digest(digest)));
                    if live.window.len() > TTY_WINDOW {
                        live.window.remove(0);
                    }
                }
            }
            ProgressMode::RawJson => self.status(i, true),
            _ => {}
        }
        self.transfers.remove(i);
        if self.mode == ProgressMode::Tty {
            self.redraw();
        }
        let _ = self.out.flush();
    }

    /// A SolveStatus with transfer `i`'s bytes, as BuildKit reports a
    /// layer's: id, vertex, name, total, current, timestamp, started, completed.
    fn status(&mut self, i: usize, completed: bool) {
        let t = &self.transfers[i];
        let now = rfc3339_nanos(SystemTime::now());
        let mut status = serde_json::json!({
            "id": t.digest, "vertex": vertex_digest(t.step), "name": t.digest,
            "total": t.total, "current": t.current, "timestamp": now, "started": rfc3339_nanos(t.started),
        });
        if completed {
            status["completed"] = now.into();
        }
        self.json(serde_json::json!({"statuses": [status]}));
    }

    fn json(&mut self, value: serde_json::Value) {
        let _ = writeln!(self.out, "{value}");
    }

    /// A SolveStatus with step `id`'s vertex: its digest, name and start,
    /// and `more` (completed, cached, error).
    fn vertex(&mut self, id: usize, more: serde_json::Map<String, serde_json::Value>) {
        let step = self.running.get(&id);
        let mut vertex = serde_json::Map::new();
        vertex.insert("digest".into(), vertex_digest(id).into());
        vertex.insert("name".into(), step.map_or("", |s| s.name.as_str()).into());
        if let Some(started) = step.and_then(|s| s.started) {
            vertex.insert("started".into(), rfc3339_nanos(started).into());
        }
        vertex.extend(more);
        self.json(serde_json::json!({"vertexes": [vertex]}));
    }

    fn redraw(&mut self) {
        self.erase_live();
        let Some(live) = self.live.as_mut() else { return };
        let t = live.started.elapsed().as_secs_f64();
        let width = self.width.unwrap_or_else(terminal_width);
        let (dim, reset) = if self.color { ("\x1b[2m", "\x1b[0m") } else { ("", "") };
        for line in &live.window {
            // A line wider than the terminal would wrap and break the redraw.
            let shown: String = line.chars().filter(|c| !c.is_control()).take(width.saturating_sub(10)).collect();
            let _ = writeln!(self.out, "{dim}  {t:>6.1} {shown}{reset}");
        }
        for transfer in &self.transfers {
            let line = transfer_line(&transfer.digest, transfer.current, transfer.total, width.saturating_sub(2));
            let _ = writeln!(self.out, "  {line}");
        }
        live.drawn = live.window.len() + self.transfers.len();
    }

    fn erase_live(&mut self) {
        if let Some(live) = self.live.as_mut() {
            for _ in 0..live.drawn {
                let _ = write!(self.out, "\x1b[1A\r\x1b[2K");
            }
            live.drawn = 0;
        }
    }

    /// Leaves a live step's header as is (another line is about to be printed).
    fn finish_live(&mut self) {
        self.erase_live();
        self.live = None;
    }
}

/// One build's handle on the (possibly shared) progress display: with a
/// prefix (e.g. `linux/arm64 `) its step names say which build they are.
/// Cloning it gives another handle on the same display.
#[derive(Clone)]
pub struct StepLog {
    progress: Arc<Mutex<Progress>>,
    prefix: String,
}

impl StepLog {
    pub fn new(progress: Arc<Mutex<Progress>>, prefix: &str) -> Self {
        StepLog { progress, prefix: prefix.to_string() }
    }

    fn lock(&self) -> MutexGuard<'_, Progress> {
        // A panic elsewhere while printing must not hide this build's errors.
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn start(&self, name: &str) -> usize {
        let name = match name.strip_prefix('[') {
            Some(rest) if !self.prefix.is_empty() => format!("[{}{rest}", self.prefix),
            _ => name.to_string(),
        };
        self.lock().start(&name)
    }

    pub fn output(&self, id: usize, stream: u8, bytes: &[u8]) {
        self.lock().output(id, stream, bytes)
    }

    pub fn end(&self, id: usize, how: StepEnd, elapsed: Duration) {
        self.lock().end(id, how, elapsed)
    }

    /// A line of its own (a warning, a summary), prefixed like step names.
    pub fn note(&self, text: &str) {
        self.lock().note(&format!("{}{text}", self.prefix))
    }

    /// Ends step `id` as failed because of `message` (see [`Progress::fail`]).
    pub fn fail(&self, id: usize, message: &str, elapsed: Duration) {
        self.lock().fail(id, message, elapsed)
    }

    /// Runs `work` as a step of its own named `name` (`[internal] ...`).
    pub fn step<T, E: std::fmt::Display>(&self, name: &str, work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        self.step_with_id(name, |_| work())
    }

    /// [`StepLog::step`] for work that needs its step's number (to show
    /// transfers under it, see [`StepLog::transfers`]).
    pub fn step_with_id<T, E: std::fmt::Display>(&self, name: &str, work: impl FnOnce(usize) -> Result<T, E>) -> Result<T, E> {
        let id = self.start(name);
        let started = Instant::now();
        let result = work(id);
        match &result {
            Ok(_) => self.end(id, StepEnd::Done, started.elapsed()),
            Err(e) => self.fail(id, &first_line(&e.to_string()), started.elapsed()),
        }
        result
    }
}

impl StepLog {
    /// An observer for a registry client that shows its blob transfers under step `id`.
    pub fn transfers(&self, id: usize) -> Arc<dyn TransferObserver> {
        Arc::new(StepTransfers { log: self.clone(), step: id })
    }
}

/// Shows a registry client's transfers under one step.
struct StepTransfers {
    log: StepLog,
    step: usize,
}

impl TransferObserver for StepTransfers {
    fn started(&self, digest: &Digest, total: u64) {
        self.log.lock().transfer_started(self.step, digest.as_ref(), total)
    }
    fn advanced(&self, digest: &Digest, bytes: u64) {
        self.log.lock().transfer_advanced(self.step, digest.as_ref(), bytes, None)
    }
    fn restarted(&self, digest: &Digest, offset: u64) {
        self.log.lock().transfer_advanced(self.step, digest.as_ref(), 0, Some(offset))
    }
    fn finished(&self, digest: &Digest) {
        self.log.lock().transfer_finished(self.step, digest.as_ref())
    }
}

/// `sha256:` and the first 12 hex digits, as the tty view names a blob.
fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) => format!("{algorithm}:{}", &hex[..hex.len().min(12)]),
        None => digest.to_string(),
    }
}

/// One transfer in the tty view, at most `width - 1` characters (a full
/// last column would wrap on some terminals):
/// `sha256:3f4d90098f5b [=======>        ] 12.3MB / 45.6MB`.
fn transfer_line(digest: &str, current: u64, total: u64, width: usize) -> String {
    let name = short_digest(digest);
    let sizes = format!("{} / {}", human_size(current), human_size(total));
    let room = width.saturating_sub(1);
    // The bar takes what the name and sizes leave, up to 30 columns; sizes
    // count as at least `999.9MB / 999.9MB` so that the bars line up.
    let bar_width = room.saturating_sub(name.chars().count() + sizes.len().max(17) + 4).min(30);
    let line = if bar_width >= 5 {
        let filled = if total == 0 { bar_width } else { (bar_width as u128 * current.min(total) as u128 / total as u128) as usize };
        let head = if filled < bar_width && filled > 0 { ">" } else { "" };
        let bar = format!("{}{head}{}", "=".repeat(filled.saturating_sub(head.len())), " ".repeat(bar_width - filled));
        format!("{name} [{bar}] {sizes}")
    } else {
        format!("{name} {sizes}")
    };
    line.chars().take(room).collect()
}

/// Bytes as docker shows them (decimal units, 3 significant digits): `12.3MB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{bytes}B") } else { format!("{v:.1}{}", UNITS[u]) }
}

/// What a terminal would show for one line of output: progress redrawn
/// with carriage returns (apt, dpkg, curl) shows its last non-blank state,
/// as in BuildKit's plain output. `None` for a line that only erased itself.
fn settled_line(line: &str) -> Option<String> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    if !line.contains('\r') {
        return Some(line.to_string());
    }
    line.split('\r').rev().find(|part| !part.trim().is_empty()).map(str::to_string)
}

/// Step `id`'s vertex digest in rawjson. BuildKit's are digests of LLB
/// operations, which kiln does not have: these only tell steps apart.
fn vertex_digest(id: usize) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(format!("kiln-step-{id}"))))
}

/// RFC 3339 with nanoseconds, as Go writes a time.Time in JSON.
fn rfc3339_nanos(time: SystemTime) -> String {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let seconds = crate::engine::image_config::rfc3339(since.as_secs() as i64);
    format!("{}.{:09}Z", seconds.trim_end_matches('Z'), since.subsec_nanos())
}

/// Whether the tty view may colour its output given `NO_COLOR`'s value
/// (https://no-color.org: any value but the empty one turns colours off).
fn colors_allowed(no_color: Option<std::ffi::OsString>) -> bool {
    no_color.is_none_or(|v| v.is_empty())
}

/// The first line of an error message (what `#N ERROR:` shows).
pub fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_string()
}

/// The terminal's width: stderr's (where progress goes), else `COLUMNS`, else 80.
fn terminal_width() -> usize {
    width_from(crate::cli::terminal::stderr_size().map(|s| s.cols), std::env::var("COLUMNS").ok())
}

fn width_from(tty_columns: Option<u16>, columns_var: Option<String>) -> usize {
    let columns_var = columns_var.and_then(|c| c.trim().parse::<usize>().ok()).filter(|&c| c > 0);
    tty_columns.map(usize::from).or(columns_var).unwrap_or(80)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_mode_looks_like_buildkit() {
        let buf = Shared::default();
        let mut p = Progress::to_writer(ProgressMode::Plain, Box::new(buf.clone()));
        let a = p.start("[1/2] FROM scratch");
        p.end(a, StepEnd::Cached, Duration::ZERO);
        let b = p.start("[2/2] RUN echo hi");
        p.output(b, 1, b"hi\nthere");
        p.end(b, StepEnd::Done, Duration::from_millis(1500));
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#1 [1/2] FROM scratch");
        assert_eq!(lines[1], "#1 CACHED");
        assert_eq!(lines[2], "#2 [2/2] RUN echo hi");
        assert!(lines[3].starts_with("#2 ") && lines[3].ends_with(" hi"), "{}", lines[3]);
        assert!(lines[4].ends_with(" there"));
        assert_eq!(lines[5], "#2 DONE 1.5s");
    }

    #[test]
    fn plain_mode_reassembles_lines_and_settles_carriage_returns() {
        let buf = Shared::default();
        let mut p = Progress::to_writer(ProgressMode::Plain, Box::new(buf.clone()));
        let a = p.start("[1/1] RUN apt-get install -y nginx");
        // As apt and dpkg write: lines split across writes, the newline alone,
        // progress redrawn with \r, a line erased with blanks, CRLF.
        for chunk in [
            &b"Reading package "[..],
            b"lists...",
            b"\n",
            b"(Reading database ... 5%\r(Reading database ... 50%\r",
            b"(Reading database ... 6789 files and directories currently installed.)\n",
            b"0% [Working]\r            \r",
            b"Get:1 http://deb.example/debian bookworm/main nginx [1 kB]\n",
            b"\r            \r\n",
            b"\n",
            b"done\r\n",
            b"no newline at the end",
        ] {
            p.output(a, 1, chunk);
        }
        p.end(a, StepEnd::Done, Duration::from_secs(2));
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let shown: Vec<&str> = text.lines().skip(1).map(|l| l.splitn(3, ' ').nth(2).unwrap_or("")).collect();
        assert_eq!(
            shown,
            [
                "Reading package lists...",
                "(Reading database ... 6789 files and directories currently installed.)",
                "Get:1 http://deb.example/debian bookworm/main nginx [1 kB]",
                "",
                "done",
                "no newline at the end",
                "2.0s",
            ],
            "{text}"
        );
        assert!(!text.contains('\r'), "{text:?}");
    }

    fn text(buf: &Shared) -> String {
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_failed_step_ends_with_buildkits_error_block() {
        let buf = Shared::default();
        let mut p = Progress::to_writer(ProgressMode::Plain, Box::new(buf.clone()));
        let a = p.start("[2/3] RUN make");
        for i in 1..=14 {
            p.output(a, 1, format!("line {i}\n").as_bytes());
        }
        p.output(a, 2, b"boom, no newline");
        p.fail(a, "process \"/bin/sh -c make\" did not complete successfully: exit code: 2", Duration::from_secs(1));
        let text = text(&buf);
        let error_at = text.find("#1 ERROR: process \"/bin/sh -c make\" did not complete successfully: exit code: 2\n").expect(&text);
        let block: Vec<&str> = text[error_at..].lines().skip(1).collect();
        assert_eq!(block[0], "------");
        assert_eq!(block[1], " > [2/3] RUN make:");
        let shown: Vec<&str> = block[2..12].iter().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(shown, ["line 6", "line 7", "line 8", "line 9", "line 10", "line 11", "line 12", "line 13", "line 14", "boom, no newline"]);
        assert!(block[2].split(' ').next().unwrap().parse::<f64>().is_ok(), "lines keep their times: {}", block[2]);
        assert_eq!(block[12], "------");
        assert_eq!(block.len(), 13, "{text}");
    }

    #[test]
    fn tty_view_without_colours_under_no_color() {
        assert!(colors_allowed(None));
        assert!(colors_allowed(Some("".into())));
        assert!(!colors_allowed(Some("1".into())));
        for color in [true, false] {
            let buf = Shared::default();
            let mut p = Progress::to_writer(ProgressMode::Tty, Box::new(buf.clone()));
            p.color = color;
            let a = p.start("[1/1] RUN x");
            p.output(a, 1, b"out\n");
            p.fail(a, "it broke", Duration::from_secs(1));
            let text = text(&buf);
            assert!(text.contains("ERROR") && text.contains(" > [1/1] RUN x:\n") && text.contains(" out\n"), "{text:?}");
            for sgr in ["\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[0m"] {
                assert_eq!(text.contains(sgr), color, "{sgr:?} in {text:?}");
            }
        }
    }

    #[test]
    fn width_is_the_terminals_then_columns() {
        assert_eq!(width_from(Some(132), Some("40".into())), 132);
        assert_eq!(width_from(None, Some("40".into())), 40);
        assert_eq!(width_from(None, Some("wide".into())), 80);
        assert_eq!(width_from(None, None), 80);
    }

    #[test]
    fn rawjson_is_buildkits_solve_status() {
        let buf = Shared::default();
        let mut p = Progress::to_writer(ProgressMode::RawJson, Box::new(buf.clone()));
        let a = p.start("[1/2] FROM base");
        p.end(a, StepEnd::Cached, Duration::ZERO);
        let b = p.start("[2/2] RUN x");
        p.output(b, 2, b"oops\n");
        p.fail(b, "it broke", Duration::from_secs(1));
        p.note("warning: careful");
        let text = text(&buf);
        let events: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(events.len(), 6, "{text}");
        let vertex = |i: usize| &events[i]["vertexes"][0];
        assert_eq!(vertex(0)["name"], "[1/2] FROM base");
        assert!(vertex(0)["digest"].as_str().unwrap().starts_with("sha256:") && vertex(0)["completed"].is_null());
        assert_eq!(vertex(1)["cached"], true);
        assert_eq!(vertex(1)["digest"], vertex(0)["digest"]);
        let started = vertex(2)["started"].as_str().unwrap();
        assert!(crate::engine::image_config::parse_rfc3339(started).is_some(), "{started}");
        assert_ne!(vertex(2)["digest"], vertex(0)["digest"]);
        let log = &events[3]["logs"][0];
        assert_eq!((log["vertex"].clone(), log["stream"].clone()), (vertex(2)["digest"].clone(), 2.into()));
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(log["data"].as_str().unwrap()).unwrap(), b"oops\n");
        assert_eq!(vertex(4)["error"], "it broke");
        assert!(vertex(4)["completed"].is_string() && vertex(4)["started"].is_string());
        assert_eq!(events[5]["warnings"][0]["short"], base64::engine::general_purpose::STANDARD.encode("careful"));
    }

    const LAYER: &str = "sha256:3f4d90098f5b5a6f6a76e9d217da85aa39b2a6f0f5d39f7c1ad00000000000aa";

    #[test]
    fn sizes_are_dockers() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(12_345_678), "12.3MB");
        assert_eq!(human_size(45_600_000), "45.6MB");
        assert_eq!(human_size(2_820_000_000), "2.8GB");
    }

    #[test]
    fn a_transfer_line_fits_the_terminal() {
        let half = transfer_line(LAYER, 22_800_000, 45_600_000, 80);
        assert_eq!(half, format!("sha256:3f4d90098f5b [==============>               ] 22.8MB / 45.6MB"));
        assert_eq!(transfer_line(LAYER, 0, 45_600_000, 80), format!("sha256:3f4d90098f5b [{}] 0B / 45.6MB", " ".repeat(30)));
        assert!(transfer_line(LAYER, 45_600_000, 45_600_000, 80).contains(&format!("[{}]", "=".repeat(30))));
        for width in [0, 10, 30, 45, 50, 60, 200] {
            let line = transfer_line(LAYER, 1_000, 45_600_000, width);
            assert!(line.chars().count() < width.max(1), "{width}: {line:?}");
        }
        // Too narrow for a bar: name and sizes alone.
        assert_eq!(transfer_line(LAYER, 1_000, 2_000, 40), "sha256:3f4d90098f5b 1.0kB / 2.0kB");
        // A bar as wide as what is left (here 8 columns), the same for any sizes.
        assert!(transfer_line(LAYER, 1_000, 2_000, 49).contains("[===>    ]"), "{}", transfer_line(LAYER, 1_000, 2_000, 49));
        assert!(transfer_line(LAYER, 100_000_000, 200_000_000, 49).contains("[===>    ] 100.0MB / 200.0MB"));
    }

    #[test]
    fn throttle_lets_through_ten_a_second() {
        let start = Instant::now();
        let mut throttle = Throttle::new(REFRESH);
        let shown = (0..100).filter(|i| throttle.ready(start + Duration::from_millis(i * 10))).count();
        assert_eq!(shown, 10);
    }

    #[test]
    fn plain_mode_prints_a_line_per_finished_blob_only() {
        let buf = Shared::default();
        let mut p = Progress::to_writer(ProgressMode::Plain, Box::new(buf.clone()));
        let a = p.start("pulling example.com/app:1");
        p.transfer_started(a, LAYER, 45_600_000);
        for _ in 0..456 {
            p.transfer_advanced(a, LAYER, 100_000, None);
        }
        p.transfer_finished(a, LAYER);
        p.end(a, StepEnd::Done, Duration::from_secs(1));
        let text = text(&buf);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].starts_with(&format!("#1 {LAYER} 45.6MB / 45.6MB ")) && lines[1].ends_with("s done"), "{}", lines[1]);
    }

    #[test]
    fn tty_view_redraws_bars_at_most_ten_times_a_second() {
        let buf = Shared::default();
        let mut p = Progress::to_writer(ProgressMode::Tty, Box::new(buf.clone()));
        p.width = Some(100);
        let a = p.start("pulling example.com/app:1");
        p.transfer_started(a, LAYER, 1_000_000);
        // A burst of chunks within one refresh period draws nothing more.
        for _ in 0..99 {
            p.transfer_advanced(a, LAYER, 10_000, None);
        }
        assert_eq!(text(&buf).matches("sha256:3f4d90098f5b [").count(), 1, "{:?}", text(&buf));
        p.redraws.last = Some(Instant::now() - REFRESH);
        p.transfer_advanced(a, LAYER, 10_000, None);
        let text_now = text(&buf);
        assert_eq!(text_now.matches("sha256:3f4d90098f5b [").count(), 2);
        assert!(text_now.ends_with(&format!("  sha256:3f4d90098f5b [{}] 1.0MB / 1.0MB\n", "=".repeat(30))), "{text_now:?}");
        for line in text_now.lines() {
            assert!(line.replace("\x1b[1A\r\x1b[2K", "").chars().count() < 100, "{line:?}");
        }
        p.transfer_finished(a, LAYER);
        p.end(a, StepEnd::Done, Duration::from_secs(1));
        let text = text(&buf);
        // The bar gives way to the blob's done line, which the step's end collapses.
        assert!(text.contains("sha256:3f4d90098f5b 1.0MB / 1.0MB 0.0s done"), "{text:?}");
        assert!(text.ends_with("=> pulling example.com/app:1  1.0s\n"), "{text:?}");
    }

    #[test]
    fn rawjson_reports_transfers_as_buildkit_statuses() {
        let buf = Shared::default();
        let mut p = Progress::to_writer(ProgressMode::RawJson, Box::new(buf.clone()));
        let a = p.start("pulling example.com/app:1");
        p.transfer_started(a, LAYER, 300);
        p.transfer_advanced(a, LAYER, 100, None);
        p.transfer_advanced(a, LAYER, 100, Some(0));
        if let Some(t) = p.transfers.first_mut() {
            t.reports.last = Some(Instant::now() - REFRESH);
        }
        p.transfer_advanced(a, LAYER, 200, None);
        p.transfer_finished(a, LAYER);
        let events: Vec<serde_json::Value> = text(&buf).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let statuses: Vec<&serde_json::Value> = events.iter().filter_map(|e| e.get("statuses")).map(|s| &s[0]).collect();
        // Started, one throttled update, completed: the two quick updates are not reported.
        assert_eq!(statuses.len(), 3, "{events:?}");
        let vertex = events[0]["vertexes"][0]["digest"].clone();
        for s in &statuses {
            assert_eq!((s["id"].as_str(), s["name"].as_str(), &s["vertex"], s["total"].as_u64()), (Some(LAYER), Some(LAYER), &vertex, Some(300)));
            assert!(s["timestamp"].is_string() && s["started"].is_string());
        }
        let current: Vec<u64> = statuses.iter().map(|s| s["current"].as_u64().unwrap()).collect();
        assert_eq!(current, [0, 300, 300], "a retry's rewind is not counted twice");
        assert!(statuses[1]["completed"].is_null() && statuses[2]["completed"].is_string());
    }
}
