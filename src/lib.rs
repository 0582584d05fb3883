//! crtool: checkpoint/restore of Linux processes, in the family of CRIU.
//!
//! Layers, bottom up: `sys` (raw syscalls, ptrace, blobs) → `infect` (seize, remote
//! syscalls, parasite) → resource modules (`task`, `mem`, `files`), each with its dump
//! and restore side by side → `dump` and `restore`, which only sequence phases.

pub mod check;
pub mod dump;
pub mod error;
pub mod fault;
pub mod files;
pub mod infect;
pub mod ipc;
pub mod lazy;
pub mod net;
pub mod pageserver;
pub mod par;
pub mod mem;
pub mod procinfo;
pub mod restore;
pub mod show;
pub mod sys;
pub mod task;

pub use error::{Error, Result};
