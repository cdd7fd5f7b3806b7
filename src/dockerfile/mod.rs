//! The Dockerfile frontend: parser, shell-word expansion, stage graph, .dockerignore.
