//! Memory: VMAs, the page walk and transfer at dump, premap and fill at restore,
//! shared anonymous memory across tasks.

pub mod dump;
pub mod restore;
pub mod shmem;
pub mod vma;
