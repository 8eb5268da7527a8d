//! The hookline binary: CLI, configuration, roles.
