//! The compel analogue: seize and freeze a task, run syscalls inside it, inject the
//! parasite blob, talk to it, and cure the task afterwards.

pub mod channel;
pub mod gadgets;
pub mod parasite;
pub mod tracee;

pub use channel::Channel;
pub use parasite::Parasite;
pub use tracee::Tracee;
