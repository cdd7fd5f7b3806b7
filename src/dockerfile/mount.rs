//! `RUN --mount=type=...,key=value,...`: BuildKit's mount syntax and rules.

/// What a `RUN --mount` mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountType,
    /// Stage name/index or image to mount from (bind, cache).
    pub from: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub readonly: bool,
    /// Cache id, secret id or ssh id.
    pub id: Option<String>,
    pub sharing: Option<Sharing>,
    pub required: bool,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// tmpfs size limit in bytes.
    pub size: Option<u64>,
    /// The flag value as written; the evaluator re-parses it with expansion.
    pub spec: String,
}

impl Mount {
    /// A secret mount's id: `id=`, else the target's file name.
    pub fn secret_id(&self) -> String {
        self.id
            .clone()
            .or_else(|| self.target.as_ref().and_then(|t| t.rsplit('/').next().map(str::to_string)))
            .unwrap_or_default()
    }

    /// An ssh mount's agent id: `id=`, else `default`.
    pub fn ssh_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| "default".to_string())
    }
}

/// Expands one value (variables of the current stage).
pub type Expander<'a> = &'a mut dyn FnMut(&str) -> Result<String, String>;

/// Parses a mount spec. Without an expander, values that reference variables
/// are left for later and only what is already known is checked.
pub fn parse(spec: &str, mut expand: Option<Expander<'_>>) -> Result<Mount, String> {
    let fields = split_csv(spec)?;
    let mut m = Mount {
        kind: MountType::Bind,
        from: None,
        source: None,
        target: None,
        readonly: false,
        id: None,
        sharing: None,
        required: false,
        mode: None,
        uid: None,
        gid: None,
        size: None,
        spec: spec.to_string(),
    };
    let mut ro_auto = true;
    let mut deferred = false;
    for field in &fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_lowercase(), v.to_string()),
            None => {
                match field.to_lowercase().as_str() {
                    "readonly" | "ro" => (m.readonly, ro_auto) = (true, false),
                    "readwrite" | "rw" => (m.readonly, ro_auto) = (false, false),
                    "required" => m.required = true,
                    _ => return Err(format!("invalid field {field:?}: expected a key=value pair")),
                }
                continue;
            }
        };
        let value = if key == "from" && has_variable(&value) {
            return Err("'from' doesn't support variable expansion, define an alias stage instead".into());
        } else if let Some(exp) = expand.as_mut() {
            exp(&value)?
        } else if has_variable(&value) {
            deferred = true;
            continue;
        } else {
            value
        };
        let bad = |what: &str| format!("invalid value {value:?} for {what}");
        match key.as_str() {
            "type" => {
                m.kind = match value.to_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => return Err(format!("unsupported mount type {value:?}: expected bind, cache, tmpfs, secret or ssh")),
                }
            }
            "from" => m.from = Some(value),
            "source" | "src" => m.source = Some(value),
            "target" | "dst" | "destination" => m.target = Some(value),
            "readonly" | "ro" => {
                m.readonly = parse_bool(&value).ok_or_else(|| bad(&key))?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.readonly = !parse_bool(&value).ok_or_else(|| bad(&key))?;
                ro_auto = false;
            }
            "required" => m.required = parse_bool(&value).ok_or_else(|| bad(&key))?,
            "size" => m.size = Some(parse_ram_size(&value).ok_or_else(|| bad(&key))?),
            "id" => m.id = Some(value),
            "sharing" => {
                m.sharing = Some(match value.to_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => return Err(format!("unsupported sharing value {value:?}: expected shared, private or locked")),
                })
            }
            "mode" => m.mode = Some(u32::from_str_radix(&value, 8).map_err(|_| bad("mode (octal)"))?),
            "uid" => m.uid = Some(value.parse().map_err(|_| bad(&key))?),
            "gid" => m.gid = Some(value.parse().map_err(|_| bad(&key))?),
            _ => {
                return Err(format!(
                    "unexpected key {key:?} in {field:?}: expected type, from, source, target, readonly, readwrite, id, \
                     sharing, required, mode, uid, gid or size"
                ))
            }
        }
    }
    if !deferred {
        validate(&mut m, ro_auto)?;
    }
    Ok(m)
}

fn validate(m: &mut Mount, ro_auto: bool) -> Result<(), String> {
    let kind = format!("{:?}", m.kind).to_lowercase();
    if !matches!(m.kind, MountType::Secret | MountType::Ssh | MountType::Cache) {
        for (name, set) in [("mode", m.mode.is_some()), ("uid", m.uid.is_some()), ("gid", m.gid.is_some())] {
            if set {
                return Err(format!("{name} is not allowed for {kind} mounts"));
            }
        }
    }
    if m.required && !matches!(m.kind, MountType::Secret | MountType::Ssh) {
        return Err(format!("required is only allowed for secret and ssh mounts, not {kind}"));
    }
    if m.size.is_some() && m.kind != MountType::Tmpfs {
        return Err(format!("size is only allowed for tmpfs mounts, not {kind}"));
    }
    if ro_auto {
        m.readonly = !matches!(m.kind, MountType::Cache | MountType::Tmpfs);
    }
    if m.kind == MountType::Secret {
        if m.from.is_some() {
            return Err("a secret mount can not have a from".into());
        }
        if m.source.is_none() && m.target.is_none() && m.id.is_none() {
            return Err("a secret mount needs an id, source or target".into());
        }
        if m.source.is_some() && m.id.is_some() {
            return Err("a secret mount can not have both source and id".into());
        }
    }
    if m.sharing.is_some() && m.kind != MountType::Cache {
        return Err(format!("sharing is only allowed for cache mounts, not {kind}"));
    }
    if matches!(m.kind, MountType::Bind | MountType::Cache | MountType::Tmpfs) && m.target.as_deref().unwrap_or("").is_empty() {
        return Err(format!("a {kind} mount needs a target"));
    }
    Ok(())
}

fn has_variable(s: &str) -> bool {
    s.find('$').is_some_and(|i| i + 1 < s.len())
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// docker/go-units `RAMInBytes`: `64m`, `1.5GiB`, `1024` (binary multiples).
pub fn parse_ram_size(s: &str) -> Option<u64> {
    let num_len = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let num: f64 = s[..num_len].parse().ok()?;
    let unit = s[num_len..].trim().to_lowercase();
    let unit = unit.strip_suffix("ib").or_else(|| unit.strip_suffix('b')).unwrap_or(&unit);
    let mult = match unit {
        "" => 1u64,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    let v = num * mult as f64;
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

/// One CSV record as Go's encoding/csv reads it.
fn split_csv(s: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("invalid mount {s:?}: unterminated quote")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(_) => return Err(format!("invalid mount {s:?}: extraneous text after a closing quote")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err(format!("invalid mount {s:?}: a quote in the middle of an unquoted field")),
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_readonly() {
        let m = parse("target=/src", None).unwrap();
        assert_eq!((m.kind, m.readonly, m.target.as_deref()), (MountType::Bind, true, Some("/src")));
        let m = parse("type=cache,target=/root/.cache,id=go,sharing=locked,mode=0755,uid=1000,gid=1000", None).unwrap();
        assert_eq!((m.kind, m.readonly, m.sharing, m.mode, m.uid), (MountType::Cache, false, Some(Sharing::Locked), Some(0o755), Some(1000)));
        let m = parse("type=bind,from=builder,source=/out,target=/in,rw", None).unwrap();
        assert_eq!((m.from.as_deref(), m.source.as_deref(), m.readonly), (Some("builder"), Some("/out"), false));
        let m = parse("type=tmpfs,dst=/tmp,size=64m", None).unwrap();
        assert_eq!(m.size, Some(64 << 20));
        let m = parse("type=secret,id=token,required", None).unwrap();
        assert!(m.required && m.readonly);
        let m = parse("type=ssh", None).unwrap();
        assert_eq!(m.kind, MountType::Ssh);
        let m = parse("\"type=bind\",\"target=/a,b\"", None).unwrap();
        assert_eq!(m.target.as_deref(), Some("/a,b"));
    }

    #[test]
    fn rejects_bad_mounts() {
        for (spec, why) in [
            ("type=nfs,target=/x", "unsupported mount type"),
            ("type=bind,target=/x,mode=0755", "mode is not allowed"),
            ("type=secret,id=a,from=x", "can not have a from"),
            ("type=secret", "needs an id"),
            ("type=bind,target=/x,sharing=shared", "sharing is only allowed"),
            ("type=cache,target=/x,sharing=wild", "unsupported sharing"),
            ("type=cache", "needs a target"),
            ("target=/x,bogus=1", "unexpected key"),
            ("target=/x,rw=maybe", "invalid value"),
            ("type=cache,target=/x,uid=-1", "invalid value"),
            ("target", "key=value"),
            ("from=$STAGE,target=/x", "doesn't support variable expansion"),
        ] {
            let err = parse(spec, None).unwrap_err();
            assert!(err.contains(why), "{spec}: {err}");
        }
    }

    #[test]
    fn variables_are_deferred_then_expanded() {
        let m = parse("type=cache,target=$HOME/.cache,uid=$UID", None).unwrap();
        assert_eq!(m.uid, None);
        let mut exp = |v: &str| Ok(v.replace("$HOME", "/root").replace("$UID", "42"));
        let m = parse(&m.spec, Some(&mut exp)).unwrap();
        assert_eq!((m.target.as_deref(), m.uid), (Some("/root/.cache"), Some(42)));
    }
}
