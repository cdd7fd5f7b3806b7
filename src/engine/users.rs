//! `USER` and `--chown` names resolved through a stage's /etc/passwd and /etc/group.
//!
//! The rules are Docker's (runc's `GetExecUser`): a user matches a passwd
//! line by name, or by uid when it is numeric; a numeric user missing from
//! passwd runs with gid 0 unless a group is given; a group matches by name
//! or gid, and a numeric one need not exist; without a group, the
//! supplementary groups are every /etc/group line listing the user's name.

/// A resolved user: what a RUN step runs as, what COPY --chown writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from /etc/group) for RUN; empty for --chown.
    pub groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    #[error(transparent)]
    Files(#[from] super::rootfs::RootfsError),
}

/// Resolves `spec` through the /etc/passwd and /etc/group of an image's
/// file system (a stage's, or the image `kiln run` starts).
pub fn resolve_in(
    stack: &super::rootfs::LayerStack,
    store: &crate::oci::store::Store,
    spec: &str,
) -> Result<Identity, UserError> {
    let text = |path: &str| -> Result<Option<String>, UserError> {
        Ok(stack.read_file(store, path)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    resolve(spec, text("etc/passwd")?.as_deref(), text("etc/group")?.as_deref())
}

/// The fields of a passwd or group line; missing fields are empty.
fn records(file: Option<&str>) -> impl Iterator<Item = Vec<&str>> {
    file.unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

fn field<'a>(r: &[&'a str], i: usize) -> &'a str {
    r.get(i).copied().unwrap_or("")
}

/// Resolves `user[:group]` (names or numbers) like Docker: a numeric user
/// missing from passwd is fine (gid 0 unless given), a missing name is an error.
/// `passwd`/`group` are the files' contents, `None` when absent.
pub fn resolve(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<Identity, UserError> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, g),
        None => (spec, ""),
    };
    let user_num: Option<u32> = user_arg.parse().ok();
    let found = records(passwd).find(|r| {
        let name = field(r, 0);
        name == user_arg || (user_num.is_some() && field(r, 2).parse::<u32>().ok() == user_num)
    });
    let (uid, mut gid, name) = match (&found, user_num) {
        (Some(r), _) => (
            field(r, 2).parse().unwrap_or(0),
            field(r, 3).parse().unwrap_or(0),
            Some(field(r, 0).to_string()),
        ),
        (None, Some(n)) => (n, 0, None),
        (None, None) if user_arg.is_empty() => (0, 0, None),
        (None, None) => return Err(UserError::NoUser(user_arg.to_string())),
    };
    let mut groups = Vec::new();
    if !group_arg.is_empty() {
        let group_num: Option<u32> = group_arg.parse().ok();
        let found = records(group).find(|r| {
            field(r, 0) == group_arg || (group_num.is_some() && field(r, 2).parse::<u32>().ok() == group_num)
        });
        gid = match (found, group_num) {
            (Some(r), _) => field(&r, 2).parse().unwrap_or(0),
            (None, Some(n)) => n,
            (None, None) => return Err(UserError::NoGroup(group_arg.to_string())),
        };
    } else if let Some(name) = name.filter(|n| !n.is_empty()) {
        for r in records(group) {
            if field(&r, 3).split(',').any(|m| m.trim() == name) {
                if let Ok(g) = field(&r, 2).parse::<u32>() {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
        }
    }
    Ok(Identity { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # a comment\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        123:x:4000:4001::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        daemon:x:1:\n\
        app:x:1000:\n\
        audio:x:29:app,other\n\
        video:x:44:other,app\n\
        staff:x:50:\n";

    fn id(uid: u32, gid: u32, groups: &[u32]) -> Identity {
        Identity { uid, gid, groups: groups.to_vec() }
    }

    #[test]
    fn names_resolve_with_supplementary_groups() {
        assert_eq!(resolve("app", Some(PASSWD), Some(GROUP)).unwrap(), id(1000, 1000, &[29, 44]));
        assert_eq!(resolve("root", Some(PASSWD), Some(GROUP)).unwrap(), id(0, 0, &[]));
    }

    #[test]
    fn numeric_user_in_passwd_takes_its_gid_and_groups() {
        assert_eq!(resolve("1000", Some(PASSWD), Some(GROUP)).unwrap(), id(1000, 1000, &[29, 44]));
        assert_eq!(resolve("1", Some(PASSWD), None).unwrap(), id(1, 1, &[]));
    }

    #[test]
    fn a_name_that_looks_numeric_matches_by_name_first() {
        // Docker matches name == arg or uid == arg, first line wins.
        assert_eq!(resolve("123", Some(PASSWD), None).unwrap(), id(4000, 4001, &[]));
    }

    #[test]
    fn numeric_user_missing_from_passwd_gets_gid_0() {
        assert_eq!(resolve("4242", Some(PASSWD), Some(GROUP)).unwrap(), id(4242, 0, &[]));
        assert_eq!(resolve("4242", None, None).unwrap(), id(4242, 0, &[]));
        assert_eq!(resolve("4242:77", None, None).unwrap(), id(4242, 77, &[]));
    }

    #[test]
    fn explicit_group_replaces_gid_and_drops_supplementary_groups() {
        assert_eq!(resolve("app:staff", Some(PASSWD), Some(GROUP)).unwrap(), id(1000, 50, &[]));
        assert_eq!(resolve("app:9999", Some(PASSWD), Some(GROUP)).unwrap(), id(1000, 9999, &[]));
        assert_eq!(resolve("0:audio", Some(PASSWD), Some(GROUP)).unwrap(), id(0, 29, &[]));
        // An empty group part is no group.
        assert_eq!(resolve("app:", Some(PASSWD), Some(GROUP)).unwrap(), id(1000, 1000, &[29, 44]));
    }

    #[test]
    fn unknown_names_fail_with_dockers_messages() {
        let e = resolve("nobody", Some(PASSWD), Some(GROUP)).unwrap_err();
        assert_eq!(e.to_string(), "unable to find user nobody: no matching entries in passwd file");
        let e = resolve("app", None, None);
        assert!(matches!(e, Err(UserError::NoUser(ref u)) if u == "app"));
        let e = resolve("app:nogroup", Some(PASSWD), Some(GROUP)).unwrap_err();
        assert_eq!(e.to_string(), "unable to find group nogroup: no matching entries in group file");
        let e = resolve("4242:nogroup", None, None).unwrap_err();
        assert!(matches!(e, UserError::NoGroup(_)));
    }
}
