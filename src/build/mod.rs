//! The build engine: executor, cache and snapshots (see issue "The build engine").
