//! Types shared by the kernel program (`portsyncd-ebpf`) and the daemon (`portsyncd`).
//!
//! Everything here is `#[repr(C)]` with fixed-width integers and explicit padding, because the
//! eBPF program writes these bytes into a ring buffer and the daemon reads them back. All
//! integers are in host byte order (the kernel's netlink messages are host order too).
//! The `user` feature adds the `aya::Pod` impls the daemon needs; the kernel side never enables it.
#![no_std]
#![deny(missing_docs)]

pub mod ebpf_build;
pub mod event;
pub mod ifla;
pub mod maps;

pub use event::*;
pub use maps::*;
