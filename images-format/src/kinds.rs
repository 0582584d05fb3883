//! The kinds of image files, their magics and file names.

use std::fmt;

/// One kind of image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageKind {
    Inventory,
    Pstree,
    Core,
    Mm,
    Pagemap,
    Fdinfo,
    Files,
    Pages,
    Pipes,
    UnixSk,
    SkQueues,
    /// SysV IPC objects (ipc.img).
    Ipc,
    /// Contents of SysV shared memory segments (shmdata.img).
    ShmData,
    /// The tree's UTS namespace (uts.img).
    Uts,
    /// memfds (memfd.img).
    Memfd,
    /// Their data (memfdpages.img).
    MemfdPages,
    /// Deleted files (ghost.img).
    Ghost,
    /// Their data (ghostdata.img).
    GhostData,
    /// Pseudo-terminal pairs (tty.img).
    Tty,
    /// Inet sockets (inetsk.img).
    InetSk,
    /// Netlink sockets (netlinksk.img).
    NetlinkSk,
    /// The tree's network namespace (netns.img).
    NetNs,
    /// Packet sockets (packetsk.img).
    PacketSk,
}

/// Every magic is "CRT" followed by a kind byte, as it appears on disk (little endian).
const MAGIC_BASE: u32 = u32::from_le_bytes(*b"CRT\0");

impl ImageKind {
    /// Every kind, in a fixed order.
    pub fn all() -> &'static [ImageKind] {
        use ImageKind::*;
        &[Inventory, Pstree, Core, Mm, Pagemap, Fdinfo, Files, Pages, Pipes, UnixSk, SkQueues, Ipc, ShmData, Uts, Memfd, MemfdPages, Ghost, GhostData, Tty, InetSk, NetlinkSk, NetNs, PacketSk]
    }

    fn number(self) -> u32 {
        match self {
            Self::Inventory => 1,
            Self::Pstree => 2,
            Self::Core => 3,
            Self::Mm => 4,
            Self::Pagemap => 5,
            Self::Fdinfo => 6,
            Self::Files => 7,
            Self::Pages => 8,
            Self::Pipes => 9,
            Self::UnixSk => 20,
            Self::SkQueues => 21,
            Self::Ipc => 30,
            Self::ShmData => 31,
            Self::Uts => 32,
            Self::Memfd => 40,
            Self::MemfdPages => 41,
            Self::Ghost => 42,
            Self::GhostData => 43,
            Self::Tty => 50,
            Self::InetSk => 22,
            Self::NetlinkSk => 23,
            Self::NetNs => 33,
            Self::PacketSk => 24,
        }
    }

    /// The magic number at the start of files of this kind (distinct per kind).
    pub fn magic(self) -> u32 {
        MAGIC_BASE | (self.number() << 24)
    }

    /// The kind whose magic is `m`, if any.
    pub fn from_magic(m: u32) -> Option<ImageKind> {
        Self::all().iter().copied().find(|k| k.magic() == m)
    }

    /// Short lower-case name: "core", "pagemap", ...
    pub fn name(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::Pstree => "pstree",
            Self::Core => "core",
            Self::Mm => "mm",
            Self::Pagemap => "pagemap",
            Self::Fdinfo => "fdinfo",
            Self::Files => "files",
            Self::Pages => "pages",
            Self::Pipes => "pipes",
            Self::UnixSk => "unixsk",
            Self::SkQueues => "skqueues",
            Self::Ipc => "ipc",
            Self::ShmData => "shmdata",
            Self::Uts => "uts",
            Self::Memfd => "memfd",
            Self::MemfdPages => "memfdpages",
            Self::Ghost => "ghost",
            Self::GhostData => "ghostdata",
            Self::Tty => "tty",
            Self::InetSk => "inetsk",
            Self::NetlinkSk => "netlinksk",
            Self::NetNs => "netns",
            Self::PacketSk => "packetsk",
        }
    }

    /// Whether there is one file of this kind per task (named with the PID).
    pub fn per_task(self) -> bool {
        !matches!(self, Self::Inventory | Self::Pstree | Self::Files | Self::Pipes | Self::UnixSk | Self::SkQueues | Self::Ipc | Self::ShmData | Self::Uts | Self::Memfd | Self::MemfdPages | Self::Ghost | Self::GhostData | Self::Tty | Self::InetSk | Self::NetlinkSk | Self::NetNs | Self::PacketSk)
    }

    /// Whether files of this kind consist of framed protobuf entries (all but pages).
    pub fn is_framed(self) -> bool {
        self != Self::Pages
    }

    /// The file name: "inventory.img", "core-42.img", ... (`pid` is ignored for the
    /// image-wide kinds).
    pub fn file_name(self, pid: u32) -> String {
        if self.per_task() {
            format!("{}-{pid}.img", self.name())
        } else {
            format!("{}.img", self.name())
        }
    }

    /// Inverse of [`ImageKind::file_name`]: the kind and PID (0 for image-wide kinds)
    /// of a canonically named image file.
    pub fn parse_file_name(name: &str) -> Option<(ImageKind, u32)> {
        let stem = name.strip_suffix(".img")?;
        Self::all().iter().copied().find_map(|kind| {
            let pid = if kind.per_task() {
                let digits = stem.strip_prefix(kind.name())?.strip_prefix('-')?;
                if !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                digits.parse().ok()?
            } else if stem == kind.name() {
                0
            } else {
                return None;
            };
            // Rejects non-canonical spellings such as leading zeros.
            (kind.file_name(pid) == name).then_some((kind, pid))
        })
    }

    /// Fully qualified protobuf message name of the entries, `None` for pages.
    pub fn message_name(self) -> Option<&'static str> {
        Some(match self {
            Self::Inventory => "crtool.Inventory",
            Self::Pstree => "crtool.PstreeEntry",
            Self::Core => "crtool.TaskCore",
            Self::Mm => "crtool.Mm",
            Self::Pagemap => "crtool.PagemapEntry",
            Self::Fdinfo => "crtool.FdEntry",
            Self::Files => "crtool.FileEntry",
            Self::Pipes => "crtool.PipeData",
            Self::UnixSk => "crtool.UnixSocket",
            Self::SkQueues => "crtool.SkPacket",
            Self::Ipc => "crtool.IpcEntry",
            Self::ShmData => "crtool.ShmChunk",
            Self::Uts => "crtool.UtsNamespace",
            Self::Memfd => "crtool.MemfdInode",
            Self::MemfdPages => "crtool.MemfdChunk",
            Self::Ghost => "crtool.GhostFile",
            Self::GhostData => "crtool.GhostChunk",
            Self::Tty => "crtool.PtyPair",
            Self::InetSk => "crtool.InetSocket",
            Self::NetlinkSk => "crtool.NetlinkSocket",
            Self::NetNs => "crtool.NetNamespace",
            Self::PacketSk => "crtool.PacketSocket",
            Self::Pages => return None,
        })
    }
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
