//! A syslog socket the test owns, read from the start as a syslog daemon reads `/dev/log`:
//! the kernel queues only a few datagrams (`net.unix.max_dgram_qlen`), and the daemon drops
//! lines rather than block on a full socket, so a sink that read late would miss them.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::background::BackgroundThread;

/// Every datagram received on a private socket (pass [`SyslogSink::path`] to the daemon's
/// `--test-syslog-socket`); the reader stops, and the socket goes, on drop.
#[derive(Debug)]
pub struct SyslogSink {
    got: Arc<Mutex<Vec<String>>>,
    reader: BackgroundThread,
    path: PathBuf,
    // Last, so the socket file outlives the reader.
    _dir: tempfile::TempDir,
}

impl SyslogSink {
    /// Binds the socket in a fresh directory and starts reading.
    pub fn bind() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.sock");
        let sock = UnixDatagram::bind(&path).expect("bind syslog socket");
        sock.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        let reader = BackgroundThread::spawn("syslog-sink", move |stop| {
            let mut buf = [0u8; 8192];
            while !stop.is_raised() {
                if let Ok(n) = sock.recv(&mut buf) {
                    if let (Ok(mut g), Some(d)) = (sink.lock(), buf.get(..n)) {
                        g.push(String::from_utf8_lossy(d).into_owned());
                    }
                }
            }
        })
        .expect("spawn syslog reader");
        SyslogSink { got, reader, path, _dir: dir }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The datagrams received so far.
    pub fn lines(&self) -> Vec<String> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Stops reading; returns every datagram received.
    pub fn finish(mut self) -> Vec<String> {
        self.reader.stop();
        self.lines()
    }
}
