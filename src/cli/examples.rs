//! The "Examples:" section of every command's help (and man page), kept in
//! one table so that a command without examples fails a test.

/// (command path below `kiln`, examples); "" is `kiln` itself.
const EXAMPLES: &[(&str, &str)] = &[
    ("", "\
  kiln build --platform linux/arm64 -t myapp:arm64 .
  kiln run --platform linux/arm64 myapp:arm64 uname -m
  kiln images"),
    ("build", "\
  # Build ./Dockerfile for arm64 into the local store
  kiln build --platform linux/arm64 -t myapp:1 .
  # Two platforms at once, pushed as one multi-platform image
  kiln build --platform linux/amd64,linux/arm64 -t registry.example/myapp:1 --push .
  # Another Dockerfile, a build argument, plain progress output
  kiln build -f docker/Dockerfile.prod --build-arg VERSION=1.2 --progress plain .
  # Only the file system of the final stage, into ./out
  kiln build -o type=local,dest=out ."),
    ("run", "\
  # The image's entrypoint and command
  kiln run myapp:1
  # A shell on a terminal, with a variable and a published port
  kiln run -it -e DEBUG=1 -p 8080:80 debian:bookworm sh
  # Variables from a file, another platform's image
  kiln run --env-file app.env --platform linux/riscv64 alpine env"),
    ("manifest", "\
  kiln manifest create myapp:1 myapp:1-amd64 myapp:1-arm64"),
    ("manifest create", "\
  # One name over two local single-platform images
  kiln manifest create myapp:1 myapp:1-amd64 myapp:1-arm64"),
    ("imagetools", "\
  kiln imagetools inspect alpine:3
  kiln imagetools create -t registry.example/app:1 registry.example/app:1-amd64 registry.example/app:1-arm64"),
    ("imagetools create", "\
  # One index over images already pushed, pushed under a tag
  kiln imagetools create -t registry.example/app:1 registry.example/app:1-amd64 registry.example/app:1-arm64
  # Show the index without pushing it
  kiln imagetools create --dry-run -t registry.example/app:1 registry.example/app:1-amd64"),
    ("imagetools inspect", "\
  kiln imagetools inspect alpine:3
  # The manifest or index exactly as the registry serves it
  kiln imagetools inspect --raw alpine:3"),
    ("vm", "\
  kiln vm exec --platform linux/arm64 --rootfs busybox.tar -- uname -a"),
    ("vm exec", "\
  # Unpack a root file system tar inside an arm64 VM and run a command there
  kiln vm exec --platform linux/arm64 --rootfs busybox.tar -- uname -a"),
    ("kernel", "\
  kiln kernel fetch --platform linux/arm64,linux/amd64
  kiln kernel list"),
    ("kernel fetch", "\
  # Cache the guest kernels for offline builds
  kiln kernel fetch --platform linux/arm64,linux/amd64,linux/riscv64"),
    ("kernel list", "\
  kiln kernel list"),
    ("images", "\
  kiln images
  # Names only
  kiln images --format '{{.Repository}}:{{.Tag}}'
  # One JSON object per image, as docker images --format json
  kiln images --format json
  # Remove every image
  kiln rmi $(kiln images -q)"),
    ("rmi", "\
  kiln rmi myapp:1
  # By ID, as `kiln images` shows it
  kiln rmi 0123456789ab"),
    ("tag", "\
  kiln tag myapp:1 registry.example/myapp:1"),
    ("prune", "\
  kiln prune"),
    ("inspect", "\
  kiln inspect alpine:3
  # The arm64 image's manifest from a multi-platform image
  kiln inspect --manifest --platform linux/arm64 alpine:3"),
    ("pull", "\
  kiln pull alpine:3
  kiln pull --platform linux/arm64 alpine:3
  kiln pull --all-platforms alpine:3"),
    ("push", "\
  kiln push registry.example/myapp:1
  # Under another name
  kiln push myapp:1 registry.example/team/myapp:1"),
    ("login", "\
  echo \"$TOKEN\" | kiln login -u me --password-stdin registry.example"),
    ("logout", "\
  kiln logout registry.example"),
    ("save", "\
  kiln save -o myapp.tar myapp:1
  # A tar `docker load` reads
  kiln save --format docker myapp:1 | docker load"),
    ("load", "\
  kiln load -i myapp.tar
  docker save alpine:3 | kiln load"),
    ("import", "\
  kiln import --platform linux/arm64 rootfs.tar myroot:1
  # With a default command
  kiln import -c 'CMD [\"/bin/sh\"]' rootfs.tar myroot:1"),
    ("version", "\
  kiln version
  kiln version --format json"),
    ("completion", "\
  kiln completion bash > /etc/bash_completion.d/kiln
  kiln completion zsh > \"${fpath[1]}/_kiln\"
  kiln completion fish > ~/.config/fish/completions/kiln.fish"),
    ("man", "\
  kiln man --dir /usr/local/share/man/man1
  kiln man | man -l -"),
];

/// The heading of the examples in a command's help.
pub const HEADING: &str = "Examples:";

/// `cmd` (the command at `path`) and its subcommands with their examples.
pub fn add(cmd: clap::Command, path: &str) -> clap::Command {
    let cmd = match EXAMPLES.iter().find(|(p, _)| *p == path) {
        Some((_, text)) => {
            let lines: Vec<String> = text.lines().map(|l| format!("  {}", l.trim_start())).collect();
            cmd.after_help(format!("{HEADING}\n{}", lines.join("\n")))
        }
        None => cmd,
    };
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    names.into_iter().fold(cmd, |cmd, name| {
        let sub_path = if path.is_empty() { name.clone() } else { format!("{path} {name}") };
        cmd.mut_subcommand(name, |sub| add(sub, &sub_path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn visible_paths(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        out.push(path.to_string());
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let sub_path = if path.is_empty() { sub.get_name().to_string() } else { format!("{path} {}", sub.get_name()) };
            visible_paths(sub, &sub_path, out);
        }
    }

    #[test]
    fn every_command_has_examples_and_every_example_a_command() {
        let mut paths = Vec::new();
        visible_paths(&crate::cli::Cli::command(), "", &mut paths);
        for path in &paths {
            assert!(EXAMPLES.iter().any(|(p, _)| p == path), "`kiln {path}` has no examples");
        }
        for (path, text) in EXAMPLES {
            assert!(paths.contains(&path.to_string()), "examples for `kiln {path}`, which does not exist");
            let run = format!("kiln {path}");
            assert!(text.lines().any(|l| l.contains(run.trim_end())), "`kiln {path}`'s examples do not run it");
        }
    }
}
