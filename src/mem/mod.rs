//! Memory: VMAs, the page walk and transfer at dump, premap and fill at restore,
//! shared anonymous memory across tasks.

pub mod background;
pub mod chain;
pub mod dedup;
pub mod dump;
pub mod pipeline;
pub mod restore;
pub mod shmem;
pub mod track;
pub mod vma;
