//! Sandbox lifecycle: liveness of run processes, cleanup of terminal ephemeral sandboxes and the
//! startup maintenance sweep.
