//! Memory: VMAs, the page walk and transfer at dump, premap and fill at restore.

pub mod dump;
pub mod restore;
pub mod vma;
