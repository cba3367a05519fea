//! eBPF capture: loads the embedded `portsyncd-ebpf` socket filter onto the daemon's event
//! socket (`NETLINK_ROUTE`, `RTNLGRP_LINK`) and reads the [`PortEvent`]s it writes into the ring
//! buffer, plus the program's per-CPU counters.
//!
//! Over 400 lines because every way loading can fail is classified here (host limits that make
//! `auto` fall back, against real errors), next to the load it describes; the ring decoding and
//! the object checks are small and share the same map and layout facts.

mod btf_blind;

pub use btf_blind::BtfAccess;

use std::{
    fmt, io,
    mem::{offset_of, size_of},
    os::fd::BorrowedFd,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, SocketFilter},
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use nix::errno::Errno;
use portsyncd_common::{
    counter, wakeup, FilterConfig, PortEvent, COUNTERS_MAP, EVENTS_MAP, FILTER_MAP, IFNAMSIZ, KIND_LEN, MAX_OWNERS,
    MAX_PREFIXES, OWNERS_MAP, PREFIX_LEN, PROGRAM_NAME, WAKEUP_MAP,
};
use tokio::io::{unix::AsyncFd, Interest};

/// Default ring size: 4 MiB holds ~52,000 events (72 bytes plus an 8-byte record header each),
/// i.e. more than ten rounds of a 1024-port flap storm (~3 notifications per port per flap) while
/// the daemon is busy writing Redis.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
/// The smallest page size Linux has; aya rounds the ring up to the real page size.
pub const MIN_RING_BYTES: u32 = 4096;

/// The object built by `portsyncd/build.rs` (see there for where it comes from).
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portsyncd-ebpf.o"))
}

/// SHA-256 of the embedded object, hex: names the exact kernel program in `--version`.
pub fn embedded_object_sha256() -> String {
    use sha2::Digest;
    sha2::Sha256::digest(object()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that the embedded object is the `portsyncd-ebpf` build this binary expects: an ELF
/// that parses, with our program and maps, and a filter map whose value is [`FilterConfig`].
/// Run at start in every capture mode, so a broken build is found on every machine, not only
/// on those where eBPF loads.
pub fn verify_embedded_object() -> Result<(), EbpfError> {
    verify_object(object())
}

fn verify_object(bytes: &[u8]) -> Result<(), EbpfError> {
    let obj = aya_obj::Object::parse(bytes).map_err(|e| EbpfError::BadObject(format!("cannot parse it: {e}")))?;
    if !obj.programs.contains_key(PROGRAM_NAME) {
        return Err(EbpfError::BadObject(format!("no program `{PROGRAM_NAME}`")));
    }
    for map in [EVENTS_MAP, COUNTERS_MAP, FILTER_MAP, WAKEUP_MAP, OWNERS_MAP] {
        if !obj.maps.contains_key(map) {
            return Err(EbpfError::BadObject(format!("no map `{map}`")));
        }
    }
    let filter_value = obj.maps.get(FILTER_MAP).map_or(0, |m| m.value_size()) as usize;
    if filter_value != size_of::<FilterConfig>() {
        return Err(EbpfError::BadObject(format!(
            "map `{FILTER_MAP}` holds {filter_value}-byte values, this binary's FilterConfig is {} bytes (stale object)",
            size_of::<FilterConfig>()
        )));
    }
    Ok(())
}

/// What to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfConfig {
    /// Ring buffer size in bytes: a power of two, at least 4096 (aya rounds up to the page size).
    pub ring_bytes: u32,
    /// Interface-name prefixes the kernel filter keeps (at most [`MAX_PREFIXES`], each at most
    /// [`PREFIX_LEN`] bytes); empty keeps every link.
    pub prefixes: Vec<String>,
    /// Several instances share the ports: the kernel keeps only this instance's.
    pub partition: Option<crate::partition::Partition>,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        // Dropping in the kernel exactly what LinkSync would ignore by name.
        let prefixes = crate::linksync::PORT_PREFIXES.iter().map(|p| (*p).to_owned()).collect();
        Self { ring_bytes: DEFAULT_RING_BYTES, prefixes, partition: None }
    }
}

crate::described! {
    /// The program's counters, summed over CPUs (see [`portsyncd_common::counter`]).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
    pub struct EbpfCounters {
        /// Events written into the ring.
        pub events: u64,
        /// Ring full: the message went to the socket instead.
        pub ring_full: u64,
        /// Link messages dropped because the name matched no prefix.
        pub filtered: u64,
        /// Messages the program could not parse (let through to the socket).
        pub parse_errors: u64,
        /// Non-link messages (let through).
        pub not_link: u64,
        /// Port messages dropped because another instance owns the port.
        pub other_instance: u64,
    }
}

/// Loading, attaching or reading the eBPF capture failed.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// More port owners than the kernel's owners map holds.
    #[error("eBPF partition: {count} port owners, the kernel map holds at most {max}")]
    TooManyOwners {
        /// Owners to write.
        count: usize,
        /// Capacity.
        max: u32,
    },
    /// More prefixes than the kernel-side table holds.
    #[error("eBPF name filter: {count} prefixes configured, the kernel filter holds at most {max}")]
    TooManyPrefixes {
        /// Prefixes given.
        count: usize,
        /// [`MAX_PREFIXES`].
        max: usize,
    },
    /// A prefix longer than a table slot.
    #[error("eBPF name filter: prefix {prefix:?} is {len} bytes, at most {max} fit")]
    PrefixTooLong {
        /// The prefix.
        prefix: String,
        /// Its length in bytes.
        len: usize,
        /// [`PREFIX_LEN`].
        max: usize,
    },
    /// An empty prefix, or one with a NUL byte (interface names have none).
    #[error("eBPF name filter: prefix {prefix:?} is {reason}")]
    BadPrefix {
        /// The prefix.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The kernel wants a power-of-two ring of at least a page.
    #[error("eBPF ring size {bytes} is not a power of two of at least {min} bytes")]
    RingSize {
        /// Configured size.
        bytes: u32,
        /// Smallest size accepted.
        min: u32,
    },
    /// [`EbpfCapture::attach`] was called outside a tokio runtime.
    #[error("eBPF capture must be attached inside a tokio runtime (the ring buffer is polled by it)")]
    NoRuntime,
    /// The kernel refused to create a map for lack of privilege.
    #[error("no CAP_BPF/CAP_PERFMON: creating BPF map `{map}` refused ({errno:?})")]
    MapRefused {
        /// Map name.
        map: String,
        /// `EPERM` or `EACCES`.
        errno: Errno,
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// The kernel has no `BPF_MAP_TYPE_RINGBUF` (added in Linux 5.8).
    #[error("kernel {kernel} has no BPF ring buffer (needs Linux 5.8): creating map `{map}` failed ({errno:?})")]
    NoRingBuf {
        /// Map name.
        map: String,
        /// Running kernel version, as far as known.
        kernel: String,
        /// Usually `EINVAL`.
        errno: Errno,
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// Creating a map failed for another reason (e.g. `ENOMEM` for a huge ring).
    #[error("creating BPF map `{map}` failed")]
    MapCreate {
        /// Map name.
        map: String,
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// `BPF_PROG_LOAD` refused for lack of privilege: before verification (no CAP_BPF, or kernel
    /// policy), or by the verifier's rules for unprivileged programs (CAP_BPF without
    /// CAP_PERFMON).
    #[error("no CAP_BPF/CAP_PERFMON: loading the socket filter refused ({errno:?}; {detail})")]
    ProgramRefused {
        /// `EPERM` or `EACCES`.
        errno: Errno,
        /// Where: "before verification", or the verifier's line.
        detail: String,
        /// aya's error.
        #[source]
        source: Box<ProgramError>,
    },
    /// The verifier rejected the program.
    #[error("the kernel verifier rejected the socket filter ({errno:?}): {last_line}")]
    VerifierRejected {
        /// `BPF_PROG_LOAD`'s error.
        errno: Errno,
        /// The verifier's last line, usually the reason.
        last_line: String,
        /// aya's error, carrying the whole verifier log.
        #[source]
        source: Box<ProgramError>,
    },
    /// The embedded object could not be parsed or relocated.
    #[error("loading the embedded eBPF object failed")]
    Object(#[source] Box<aya::EbpfError>),
    /// The embedded object is not a usable build of `portsyncd-ebpf` (a build problem, never a
    /// reason to fall back to netlink).
    #[error("the embedded eBPF object is unusable: {0} (rebuild it: cargo xtask build-ebpf)")]
    BadObject(String),
    /// The object lacks a map or program this module expects (build mismatch).
    #[error("the embedded eBPF object has no {kind} `{name}`")]
    Missing {
        /// "map" or "program".
        kind: &'static str,
        /// Its name.
        name: &'static str,
    },
    /// A map operation failed.
    #[error("eBPF map `{map}`")]
    Map {
        /// Map name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Box<MapError>,
    },
    /// A program operation failed (other than load and attach).
    #[error("eBPF program `{program}`")]
    Program {
        /// Program name.
        program: &'static str,
        /// aya's error.
        #[source]
        source: Box<ProgramError>,
    },
    /// `SO_ATTACH_BPF` failed.
    #[error("attaching the socket filter to the event socket failed")]
    Attach(#[source] Box<ProgramError>),
    /// tokio refused the ring's file descriptor.
    #[error("registering the ring buffer with tokio failed")]
    Register(#[source] io::Error),
    /// Waiting for ring readiness failed.
    #[error("waiting for the ring buffer failed")]
    Wait(#[source] io::Error),
}

impl EbpfError {
    /// True when the kernel or our privileges rule eBPF capture out (no CAP_BPF/CAP_PERFMON, no
    /// ring buffer support, verifier refusal): the daemon should run on plain netlink instead.
    /// False for configuration mistakes and bugs.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            Self::MapRefused { .. }
                | Self::NoRingBuf { .. }
                | Self::ProgramRefused { .. }
                | Self::VerifierRejected { .. }
        )
    }
}

/// The attached socket filter and its ring buffer.
pub struct EbpfCapture {
    ring: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    /// Whether the program wakes the daemon per event ([`portsyncd_common::wakeup`]).
    wakeup: Array<MapData, u32>,
    /// The value last written to `wakeup`.
    polled: bool,
    /// Port name -> owning instance, when several instances share the ports.
    owners: aya::maps::HashMap<MapData, [u8; 16], u32>,
    /// An event taken from the ring by [`EbpfCapture::readable`] to prove readiness; handed out
    /// first by the next [`EbpfCapture::drain`].
    pending: Option<PortEvent>,
    decode_errors: u64,
    load_duration: Duration,
    verify_duration: Duration,
    verified_instructions: Option<u32>,
    kernel_btf: BtfAccess,
    logger: Option<tokio::task::JoinHandle<()>>,
    /// Keeps the program and the remaining maps (FILTER_CONFIG) alive.
    _ebpf: Ebpf,
}

impl fmt::Debug for EbpfCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EbpfCapture")
            .field("pending", &self.pending.is_some())
            .field("decode_errors", &self.decode_errors)
            .field("load_duration", &self.load_duration)
            .field("verify_duration", &self.verify_duration)
            .field("verified_instructions", &self.verified_instructions)
            .field("kernel_btf", &self.kernel_btf)
            .field("logger", &self.logger.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for EbpfCapture {
    fn drop(&mut self) {
        if let Some(logger) = &self.logger {
            logger.abort();
        }
    }
}

impl EbpfCapture {
    /// Loads the embedded object, writes the name filter, attaches the program to `socket`
    /// (`SO_ATTACH_BPF`) and opens the ring. Must run inside a tokio runtime.
    ///
    /// Every fallible step happens before the attach, so on error nothing is attached and the
    /// socket keeps receiving every notification. Dropping the capture does not detach the
    /// program (the kernel ties it to the socket): close the socket or call [`Self::detach`].
    pub fn attach(socket: BorrowedFd<'_>, cfg: &EbpfConfig) -> Result<Self, EbpfError> {
        let mut filter = filter_config(&cfg.prefixes)?;
        if let Some(p) = cfg.partition.as_ref().filter(|p| p.is_partitioned()) {
            let entries = p.assignments().count();
            if entries > MAX_OWNERS as usize {
                return Err(EbpfError::TooManyOwners { count: entries, max: MAX_OWNERS });
            }
            filter.instance = u32::from(p.me());
            filter.partitioned = 1;
        }
        check_ring_bytes(cfg.ring_bytes)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(EbpfError::NoRuntime);
        }
        raise_memlock_limit();

        let started = Instant::now();
        // The filter reads only stable UAPI, no kernel structs: no BTF relocations needed, and
        // the loader does not get to read the kernel's (see btf_blind).
        let ring_bytes = cfg.ring_bytes;
        let (loaded, kernel_btf) = btf_blind::run_without_kernel_btf(|| {
            EbpfLoader::new().btf(None).map_max_entries(EVENTS_MAP, ring_bytes).load(object())
        });
        let mut bpf = loaded.map_err(classify_load_error)?;
        let logger = start_logger(&mut bpf);

        let filter_map = bpf.map_mut(FILTER_MAP).ok_or(EbpfError::Missing { kind: "map", name: FILTER_MAP })?;
        let mut filter_array: Array<&mut MapData, FilterConfig> =
            Array::try_from(filter_map).map_err(|source| map_error(FILTER_MAP, source))?;
        filter_array.set(0, filter, 0).map_err(|source| map_error(FILTER_MAP, source))?;

        let owners_map = bpf.take_map(OWNERS_MAP).ok_or(EbpfError::Missing { kind: "map", name: OWNERS_MAP })?;
        let mut owners = aya::maps::HashMap::try_from(owners_map).map_err(|source| map_error(OWNERS_MAP, source))?;
        if let Some(p) = &cfg.partition {
            write_owners(&mut owners, p)?;
        }

        let ring_map = bpf.take_map(EVENTS_MAP).ok_or(EbpfError::Missing { kind: "map", name: EVENTS_MAP })?;
        let ring = RingBuf::try_from(ring_map).map_err(|source| map_error(EVENTS_MAP, source))?;
        let ring = register(ring)?;
        let counters_map = bpf.take_map(COUNTERS_MAP).ok_or(EbpfError::Missing { kind: "map", name: COUNTERS_MAP })?;
        let counters = PerCpuArray::try_from(counters_map).map_err(|source| map_error(COUNTERS_MAP, source))?;
        let wakeup_map = bpf.take_map(WAKEUP_MAP).ok_or(EbpfError::Missing { kind: "map", name: WAKEUP_MAP })?;
        let wakeup = Array::try_from(wakeup_map).map_err(|source| map_error(WAKEUP_MAP, source))?;

        let program: &mut SocketFilter = bpf
            .program_mut(PROGRAM_NAME)
            .ok_or(EbpfError::Missing { kind: "program", name: PROGRAM_NAME })?
            .try_into()
            .map_err(|source| EbpfError::Program { program: PROGRAM_NAME, source: Box::new(source) })?;
        let verify_started = Instant::now();
        program.load().map_err(classify_program_error)?;
        let verify_duration = verify_started.elapsed();
        program.attach(socket).map_err(|e| EbpfError::Attach(Box::new(e)))?;
        let load_duration = started.elapsed();
        let verified_instructions = program.info().ok().and_then(|info| info.verified_instruction_count());

        Ok(Self {
            ring,
            counters,
            wakeup,
            owners,
            polled: false,
            pending: None,
            decode_errors: 0,
            load_duration,
            verify_duration,
            verified_instructions,
            kernel_btf,
            logger,
            _ebpf: bpf,
        })
    }

    /// `true`: events no longer wake the ring's waiters (the daemon reads the ring on a timer
    /// during a storm); `false`: every event wakes them again. Events submitted before the
    /// switch back may not have woken anyone: the caller drains once after switching.
    pub fn set_polled(&mut self, polled: bool) -> Result<(), EbpfError> {
        if polled != self.polled {
            let value = if polled { wakeup::POLLED } else { wakeup::PER_EVENT };
            self.wakeup.set(0, value, 0).map_err(|source| map_error(WAKEUP_MAP, source))?;
            self.polled = polled;
        }
        Ok(())
    }

    /// The partition changed (the leader learned another instance's claims): the kernel filter
    /// follows it.
    pub fn set_partition(&mut self, p: &crate::partition::Partition) -> Result<(), EbpfError> {
        if p.assignments().count() > MAX_OWNERS as usize {
            return Err(EbpfError::TooManyOwners { count: p.assignments().count(), max: MAX_OWNERS });
        }
        write_owners(&mut self.owners, p)
    }

    /// Removes whatever socket filter is attached to `socket`: its link notifications go to the
    /// socket again.
    pub fn detach(socket: BorrowedFd<'_>) -> Result<(), EbpfError> {
        SocketFilter::detach(socket).map_err(|e| EbpfError::Attach(Box::new(e)))
    }

    /// Waits until the ring holds at least one event. Cancel-safe: state changes only after the
    /// wait completed, and then it returns without awaiting again.
    ///
    /// tokio reports the ring's fd edge-triggered, so readiness is cleared only once the ring
    /// was seen empty, and the ring is checked once more after clearing: an event produced
    /// between the check and `clear_ready` would otherwise wait for the next one.
    pub async fn readable(&mut self) -> Result<(), EbpfError> {
        if self.pending.is_some() {
            return Ok(());
        }
        loop {
            let mut guard = self.ring.readable_mut().await.map_err(EbpfError::Wait)?;
            if let Some(event) = next_event(guard.get_inner_mut(), &mut self.decode_errors) {
                self.pending = Some(event);
                return Ok(());
            }
            guard.clear_ready();
            if let Some(event) = next_event(guard.get_inner_mut(), &mut self.decode_errors) {
                self.pending = Some(event);
                return Ok(());
            }
        }
    }

    /// Appends up to `max` events that are in the ring now to `out`; returns how many. Never
    /// blocks. Readiness is left alone: if events remain, [`Self::readable`] returns at once.
    pub fn drain(&mut self, out: &mut Vec<PortEvent>, max: usize) -> usize {
        let mut appended = 0;
        if appended < max {
            if let Some(event) = self.pending.take() {
                out.push(event);
                appended += 1;
            }
        }
        while appended < max {
            match next_event(self.ring.get_mut(), &mut self.decode_errors) {
                Some(event) => {
                    out.push(event);
                    appended += 1;
                }
                None => break,
            }
        }
        appended
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<EbpfCounters, EbpfError> {
        let read = |index: u32| -> Result<u64, EbpfError> {
            let per_cpu = self.counters.get(&index, 0).map_err(|source| map_error(COUNTERS_MAP, source))?;
            Ok(per_cpu.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
        };
        Ok(EbpfCounters {
            events: read(counter::EVENTS)?,
            ring_full: read(counter::RING_FULL)?,
            filtered: read(counter::FILTERED)?,
            parse_errors: read(counter::PARSE_ERROR)?,
            not_link: read(counter::NOT_LINK)?,
            other_instance: read(counter::OTHER_INSTANCE)?,
        })
    }

    /// Time from starting the object load to the program being attached: object parsing (and
    /// the kernel's BTF, unused, where it could not be hidden), map creation, verification and
    /// `SO_ATTACH_BPF`.
    pub fn load_duration(&self) -> Duration {
        self.load_duration
    }

    /// Whether aya's loader could read (and so parsed) the kernel's BTF.
    pub fn kernel_btf(&self) -> BtfAccess {
        self.kernel_btf
    }

    /// The `BPF_PROG_LOAD` part of [`Self::load_duration`]: verification and JIT.
    pub fn verify_duration(&self) -> Duration {
        self.verify_duration
    }

    /// Instructions the verifier processed (kernel 5.16+), a measure of verification cost.
    pub fn verified_instructions(&self) -> Option<u32> {
        self.verified_instructions
    }

    /// Ring records too short to be a [`PortEvent`] (skipped; never expected).
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }
}

/// Every owner the partition knows, into the kernel's map (inserts overwrite).
fn write_owners(
    owners: &mut aya::maps::HashMap<MapData, [u8; 16], u32>,
    p: &crate::partition::Partition,
) -> Result<(), EbpfError> {
    for (name, owner) in p.assignments() {
        owners
            .insert(owner_key(name.as_str()), u32::from(*owner), 0)
            .map_err(|source| map_error(OWNERS_MAP, source))?;
    }
    Ok(())
}

/// The owners map's key: the name, zero-padded to 16 bytes, as the program reads it from the
/// message (the kernel's NUL and whatever follows it are zero there too).
pub fn owner_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    for (dst, src) in key.iter_mut().zip(name.as_bytes().iter().take(IFNAMSIZ - 1)) {
        *dst = *src;
    }
    key
}

/// Builds the kernel filter's table from name prefixes.
pub fn filter_config(prefixes: &[String]) -> Result<FilterConfig, EbpfError> {
    if prefixes.len() > MAX_PREFIXES {
        return Err(EbpfError::TooManyPrefixes { count: prefixes.len(), max: MAX_PREFIXES });
    }
    let mut cfg = FilterConfig {
        prefix_count: 0,
        prefix_lens: [0; MAX_PREFIXES],
        prefixes: [[0; PREFIX_LEN]; MAX_PREFIXES],
        instance: 0,
        partitioned: 0,
    };
    for ((prefix, len), slot) in prefixes.iter().zip(cfg.prefix_lens.iter_mut()).zip(cfg.prefixes.iter_mut()) {
        let bytes = prefix.as_bytes();
        if bytes.is_empty() {
            return Err(EbpfError::BadPrefix { prefix: prefix.clone(), reason: "empty" });
        }
        if bytes.contains(&0) {
            return Err(EbpfError::BadPrefix { prefix: prefix.clone(), reason: "contains a NUL byte" });
        }
        if bytes.len() > PREFIX_LEN {
            return Err(EbpfError::PrefixTooLong { prefix: prefix.clone(), len: bytes.len(), max: PREFIX_LEN });
        }
        for (dst, src) in slot.iter_mut().zip(bytes) {
            *dst = *src;
        }
        // Fits: PREFIX_LEN (16) < 256.
        *len = bytes.len() as u8;
    }
    cfg.prefix_count = prefixes.len() as u32;
    Ok(cfg)
}

/// The kernel's rule for a ring buffer's size: a power of two of at least a page. Checked by the
/// configuration too, so a bad `ring_bytes` is refused at start in every capture mode.
pub fn check_ring_bytes(bytes: u32) -> Result<(), EbpfError> {
    if bytes.is_power_of_two() && bytes >= MIN_RING_BYTES {
        Ok(())
    } else {
        Err(EbpfError::RingSize { bytes, min: MIN_RING_BYTES })
    }
}

/// Decodes one ring record (host byte order, the layout of [`PortEvent`]). `None` when the
/// record is too short.
pub fn decode_event(bytes: &[u8]) -> Option<PortEvent> {
    if bytes.len() < size_of::<PortEvent>() {
        return None;
    }
    fn take<const N: usize>(bytes: &[u8], off: usize) -> Option<[u8; N]> {
        bytes.get(off..off + N)?.try_into().ok()
    }
    let u8_at = |off: usize| bytes.get(off).copied();
    let u16_at = |off: usize| take::<2>(bytes, off).map(u16::from_ne_bytes);
    let u32_at = |off: usize| take::<4>(bytes, off).map(u32::from_ne_bytes);
    Some(PortEvent {
        timestamp_ns: take::<8>(bytes, offset_of!(PortEvent, timestamp_ns)).map(u64::from_ne_bytes)?,
        msg_type: u16_at(offset_of!(PortEvent, msg_type))?,
        origin: u8_at(offset_of!(PortEvent, origin))?,
        present: u8_at(offset_of!(PortEvent, present))?,
        ifindex: u32_at(offset_of!(PortEvent, ifindex))?,
        flags: u32_at(offset_of!(PortEvent, flags))?,
        change: u32_at(offset_of!(PortEvent, change))?,
        mtu: u32_at(offset_of!(PortEvent, mtu))?,
        master: u32_at(offset_of!(PortEvent, master))?,
        operstate: u8_at(offset_of!(PortEvent, operstate))?,
        carrier: u8_at(offset_of!(PortEvent, carrier))?,
        name_len: u8_at(offset_of!(PortEvent, name_len))?,
        kind_len: u8_at(offset_of!(PortEvent, kind_len))?,
        family: u8_at(offset_of!(PortEvent, family))?,
        _pad: [0; 3],
        name: take::<IFNAMSIZ>(bytes, offset_of!(PortEvent, name))?,
        kind: take::<KIND_LEN>(bytes, offset_of!(PortEvent, kind))?,
    })
}

/// Takes the next decodable event from the ring, counting and skipping malformed records.
fn next_event(ring: &mut RingBuf<MapData>, decode_errors: &mut u64) -> Option<PortEvent> {
    loop {
        let item = ring.next()?;
        match decode_event(&item) {
            Some(event) => return Some(event),
            None => *decode_errors += 1,
        }
    }
}

fn map_error(map: &'static str, source: MapError) -> EbpfError {
    EbpfError::Map { map, source: Box::new(source) }
}

// tokio 1.54 deprecates the safe constructor in favour of an `unsafe` one; the safety argument
// is the same either way: the ring's fd is owned by the RingBuf inside the AsyncFd and closed
// only when it drops.
#[expect(deprecated, reason = "the safe AsyncFd constructor; the fd is owned by the AsyncFd")]
fn register(ring: RingBuf<MapData>) -> Result<AsyncFd<RingBuf<MapData>>, EbpfError> {
    AsyncFd::with_interest(ring, Interest::READABLE).map_err(EbpfError::Register)
}

/// Sorts map-creation failures into "not possible here" and real errors.
fn classify_load_error(error: aya::EbpfError) -> EbpfError {
    let create = match &error {
        aya::EbpfError::MapError(MapError::CreateError { name, io_error }) => {
            Some((name.clone(), io_error.raw_os_error()))
        }
        _ => None,
    };
    let Some((map, raw)) = create else {
        return EbpfError::Object(Box::new(error));
    };
    let errno = Errno::from_raw(raw.unwrap_or(0));
    match errno {
        Errno::EPERM | Errno::EACCES => EbpfError::MapRefused { map, errno, source: Box::new(error) },
        // Before 5.8 the map type is unknown, which the kernel reports as EINVAL; the size was
        // validated, so EINVAL on the ring means exactly that.
        Errno::EINVAL if map == EVENTS_MAP => EbpfError::NoRingBuf {
            map,
            kernel: KernelVersion::current().map(|v| v.to_string()).unwrap_or_else(|_| "(unknown version)".to_owned()),
            errno,
            source: Box::new(error),
        },
        _ => EbpfError::MapCreate { map, source: Box::new(error) },
    }
}

fn classify_program_error(error: ProgramError) -> EbpfError {
    let ProgramError::LoadError { io_error, verifier_log } = &error else {
        return EbpfError::Program { program: PROGRAM_NAME, source: Box::new(error) };
    };
    let errno = Errno::from_raw(io_error.raw_os_error().unwrap_or(0));
    match program_refusal(errno, &verifier_log.to_string()) {
        Refusal::Privilege(detail) => EbpfError::ProgramRefused { errno, detail, source: Box::new(error) },
        Refusal::Verifier(last_line) => EbpfError::VerifierRejected { errno, last_line, source: Box::new(error) },
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Where the privilege check failed.
    Privilege(String),
    /// The last line of the verifier log.
    Verifier(String),
}

/// A refusal with an empty verifier log came before verification (capability check or kernel
/// policy); a verifier refusal "for !root" means CAP_PERFMON is missing (CAP_BPF alone is not
/// enough); anything else is the verifier's verdict. The reason is the log's last line before
/// the statistics the kernel appends.
fn program_refusal(errno: Errno, log: &str) -> Refusal {
    const STATS: [&str; 3] = ["processed ", "verification time ", "stack depth "];
    let last_line = log.lines().map(str::trim).rev().find(|l| !l.is_empty() && !STATS.iter().any(|s| l.starts_with(s)));
    match last_line {
        None if matches!(errno, Errno::EPERM | Errno::EACCES) => Refusal::Privilege("before verification".to_owned()),
        None => Refusal::Verifier("(no verifier log)".to_owned()),
        // The verifier's rules for programs loaded without CAP_PERFMON (`allow_ptr_leaks`).
        Some(line) if line.contains("!root") => Refusal::Privilege(format!("verifier: {line}")),
        Some(line) => Refusal::Verifier(line.to_owned()),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones use memory cgroups, and
/// some environments refuse the raise outright. Either way a failure here is only worth a note.
fn raise_memlock_limit() {
    use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
    let Err(error) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) else {
        return;
    };
    let memcg_accounting = KernelVersion::current().map(|v| v >= KernelVersion::new(5, 11, 0)).unwrap_or(false);
    if memcg_accounting {
        tracing::debug!(%error, "cannot raise RLIMIT_MEMLOCK (not needed on this kernel)");
    } else {
        tracing::warn!(%error, "cannot raise RLIMIT_MEMLOCK; BPF map creation may fail");
    }
}

/// Forwards aya-log records (only a `debug`-feature build of the program has the log ring) to the
/// `log` facade, which tracing-subscriber bridges into `tracing`.
fn start_logger(bpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(bpf) {
        Ok(logger) => logger,
        Err(aya_log::Error::MapNotFound) => return None,
        Err(error) => {
            tracing::warn!(%error, "eBPF program logs unavailable");
            return None;
        }
    };
    #[expect(deprecated, reason = "the safe AsyncFd constructor; the fd is owned by the AsyncFd")]
    let mut fd = match AsyncFd::with_interest(logger, Interest::READABLE) {
        Ok(fd) => fd,
        Err(error) => {
            tracing::warn!(%error, "eBPF program logs unavailable");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                    // Records written between the flush and clear_ready would otherwise wait.
                    guard.get_inner_mut().flush();
                }
                Err(error) => {
                    tracing::warn!(%error, "eBPF program log reader stopped");
                    return;
                }
            }
        }
    }))
}

// Loading the program onto a real socket needs root and a namespace: tests/tests/ebpf_filter.rs.
#[cfg(test)]
mod tests {
    use portsyncd_common::{origin, present, RTM_DELLINK, RTM_NEWLINK};

    use super::*;

    #[test]
    fn the_embedded_object_is_verified_and_garbage_or_truncated_objects_are_refused() {
        verify_embedded_object().expect("the object this build embedded");
        assert!(matches!(verify_object(b"not an elf"), Err(EbpfError::BadObject(_))));
        let obj = object();
        assert!(matches!(verify_object(&obj[..obj.len() / 2]), Err(EbpfError::BadObject(_))));
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn filter_config_holds_default_prefixes() {
        let cfg = filter_config(&EbpfConfig::default().prefixes).unwrap();
        assert_eq!(cfg.prefix_count, 2);
        assert_eq!(cfg.prefix_lens, [8, 11, 0, 0]);
        assert_eq!(&cfg.prefixes[0][..9], b"Ethernet\0");
        assert_eq!(&cfg.prefixes[1][..12], b"PortChannel\0");
        assert_eq!(cfg.prefixes[2], [0; PREFIX_LEN]);
    }

    #[test]
    fn filter_config_without_prefixes_keeps_everything() {
        let cfg = filter_config(&[]).unwrap();
        assert_eq!(cfg.prefix_count, 0);
    }

    #[test]
    fn filter_config_rejects_what_the_kernel_table_cannot_hold() {
        let five = strings(&["a", "b", "c", "d", "e"]);
        let err = filter_config(&five).unwrap_err();
        assert!(matches!(err, EbpfError::TooManyPrefixes { count: 5, max: 4 }), "{err:?}");
        assert!(err.to_string().contains("at most 4"), "{err}");

        let long = strings(&["Ethernet", "ABCDEFGHIJKLMNOPQ"]);
        let err = filter_config(&long).unwrap_err();
        assert!(matches!(err, EbpfError::PrefixTooLong { len: 17, max: 16, .. }), "{err:?}");
        assert!(err.to_string().contains("ABCDEFGHIJKLMNOPQ"), "{err}");

        assert!(filter_config(&strings(&["ABCDEFGHIJKLMNOP"])).is_ok(), "16 bytes fit");
        assert!(matches!(filter_config(&strings(&[""])), Err(EbpfError::BadPrefix { reason: "empty", .. })));
        assert!(matches!(filter_config(&strings(&["Eth\0"])), Err(EbpfError::BadPrefix { .. })));
        assert!(!filter_config(&five).unwrap_err().is_unsupported());
    }

    #[test]
    fn ring_size_must_be_a_power_of_two_of_a_page_or_more() {
        assert!(check_ring_bytes(DEFAULT_RING_BYTES).is_ok());
        assert!(check_ring_bytes(4096).is_ok());
        for bad in [0, 2048, 4095, 6000, 3 << 20] {
            assert!(matches!(check_ring_bytes(bad), Err(EbpfError::RingSize { bytes, .. }) if bytes == bad), "{bad}");
        }
    }

    /// A record laid out by hand from the documented `PortEvent` layout, independent of
    /// `offset_of!`, so a layout change or a decoding slip both fail here.
    #[test]
    fn decodes_a_raw_ring_record() {
        let mut raw = [0u8; 72];
        raw[0..8].copy_from_slice(&123_456_789_000u64.to_ne_bytes());
        raw[8..10].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        raw[10] = origin::EBPF;
        raw[11] = present::MTU | present::KIND | present::CARRIER;
        raw[12..16].copy_from_slice(&42u32.to_ne_bytes());
        raw[16..20].copy_from_slice(&0x1043u32.to_ne_bytes());
        raw[20..24].copy_from_slice(&1u32.to_ne_bytes());
        raw[24..28].copy_from_slice(&9100u32.to_ne_bytes());
        raw[28..32].copy_from_slice(&7u32.to_ne_bytes());
        raw[32] = 6; // IF_OPER_UP
        raw[33] = 1;
        raw[34] = 9;
        raw[35] = 4;
        raw[36] = 7; // AF_BRIDGE
        raw[40..49].copy_from_slice(b"Ethernet0");
        raw[56..60].copy_from_slice(b"veth");

        let ev = decode_event(&raw).unwrap();
        assert_eq!(ev.timestamp_ns, 123_456_789_000);
        assert_eq!(ev.msg_type, RTM_NEWLINK);
        assert_eq!(ev.origin, origin::EBPF);
        assert_eq!(ev.present, present::MTU | present::KIND | present::CARRIER);
        assert_eq!(ev.ifindex, 42);
        assert_eq!(ev.flags, 0x1043);
        assert!(ev.admin_up() && ev.oper_up());
        assert_eq!(ev.change, 1);
        assert_eq!(ev.mtu, 9100);
        assert_eq!(ev.master, 7);
        assert_eq!((ev.operstate, ev.carrier, ev.family), (6, 1, 7));
        assert_eq!(ev.name_bytes(), b"Ethernet0");
        assert_eq!(ev.kind_bytes(), b"veth");

        // The ring hands out records rounded up to 8 bytes; extra bytes are ignored.
        let mut longer = raw.to_vec();
        longer.extend_from_slice(&[0xff; 8]);
        assert_eq!(decode_event(&longer), Some(ev));
        assert_eq!(decode_event(&raw[..71]), None);
    }

    #[test]
    fn decodes_dellink() {
        let mut raw = [0u8; 72];
        raw[8..10].copy_from_slice(&RTM_DELLINK.to_ne_bytes());
        raw[34] = 12;
        raw[40..52].copy_from_slice(b"PortChannel1");
        let ev = decode_event(&raw).unwrap();
        assert_eq!(ev.msg_type, RTM_DELLINK);
        assert_eq!(ev.name_bytes(), b"PortChannel1");
        assert_eq!(ev.kind_bytes(), b"");
    }

    #[test]
    fn map_refusals_are_unsupported_with_a_clear_reason() {
        let error = |name: &str, errno: i32| {
            classify_load_error(aya::EbpfError::MapError(MapError::CreateError {
                name: name.to_owned(),
                io_error: io::Error::from_raw_os_error(errno),
            }))
        };
        let eperm = error(COUNTERS_MAP, libc::EPERM);
        assert!(eperm.is_unsupported());
        assert_eq!(eperm.to_string(), "no CAP_BPF/CAP_PERFMON: creating BPF map `COUNTERS` refused (EPERM)");
        assert!(error(EVENTS_MAP, libc::EACCES).is_unsupported());

        let no_ringbuf = error(EVENTS_MAP, libc::EINVAL);
        assert!(matches!(no_ringbuf, EbpfError::NoRingBuf { .. }), "{no_ringbuf:?}");
        assert!(no_ringbuf.is_unsupported());
        assert!(no_ringbuf.to_string().contains("needs Linux 5.8"), "{no_ringbuf}");

        let enomem = error(EVENTS_MAP, libc::ENOMEM);
        assert!(matches!(enomem, EbpfError::MapCreate { .. }), "{enomem:?}");
        assert!(!enomem.is_unsupported());
    }

    #[test]
    fn program_refusal_tells_privilege_from_verifier() {
        let before = Refusal::Privilege("before verification".to_owned());
        assert_eq!(program_refusal(Errno::EPERM, ""), before);
        assert_eq!(program_refusal(Errno::EACCES, "\n"), before);
        // What CAP_BPF without CAP_PERFMON gets on this kernel.
        let unprivileged = "R5 tried to add from different maps, paths or scalars, pointer \
                            arithmetic with it prohibited for !root";
        assert_eq!(
            program_refusal(
                Errno::EACCES,
                &format!("0: R1=ctx()\n{unprivileged}\nprocessed 40 insns (limit 1000000)\n")
            ),
            Refusal::Privilege(format!("verifier: {unprivileged}"))
        );
        assert_eq!(
            program_refusal(
                Errno::EACCES,
                "0: R1=ctx()\nR2 pointer arithmetic prohibited\nverification time 20 usec\n\
                 stack depth 8\nprocessed 12 insns (limit 1000000)\n"
            ),
            Refusal::Verifier("R2 pointer arithmetic prohibited".to_owned())
        );
        assert_eq!(program_refusal(Errno::EINVAL, ""), Refusal::Verifier("(no verifier log)".to_owned()));
    }
}
