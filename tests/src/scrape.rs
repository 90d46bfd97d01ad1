//! Scrapes of `/metrics` over ONE keep-alive connection.
//!
//! The agent observes the test process too: every [`crate::Agent::metrics`] call is a new HTTP
//! connection from the test, detected as HTTP and turned into a client-side exchange. Node-wide
//! self-metrics (`meshtap_protocol_detected_total`, `meshtap_exchanges_total`) then move with
//! the scrapes themselves, by an amount that depends on timing. Over one keep-alive connection
//! the scrapes add a known amount: one detected connection (at the first scrape) and one
//! exchange per completed scrape.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::prom::Metrics;

const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Scraper {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
    /// Scrapes completed on this connection.
    pub scrapes: u64,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl Scraper {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to the agent at {addr}: {e}"));
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(TIMEOUT)).expect("timeout");
        Self {
            reader: BufReader::new(stream),
            addr,
            scrapes: 0,
        }
    }

    fn get(&mut self) -> io::Result<String> {
        write!(
            self.reader.get_mut(),
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
            self.addr
        )?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        if status != "200" {
            return Err(invalid(format!("status line {line:?}")));
        }
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(
                        value
                            .parse::<usize>()
                            .map_err(|e| invalid(format!("content-length {value:?}: {e}")))?,
                    );
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.eq_ignore_ascii_case("chunked");
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size_text = line.trim().split(';').next().unwrap_or_default();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|e| invalid(format!("chunk size {size_text:?}: {e}")))?;
                if size == 0 {
                    line.clear();
                    self.reader.read_line(&mut line)?;
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                self.reader.read_exact(&mut body[start..])?;
                let mut crlf = [0; 2];
                self.reader.read_exact(&mut crlf)?;
            }
        } else {
            let length =
                length.ok_or_else(|| invalid("neither content-length nor chunked".to_owned()))?;
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        }
        String::from_utf8(body).map_err(|e| invalid(format!("body is not UTF-8: {e}")))
    }

    /// One scrape, parsed.
    pub fn metrics(&mut self) -> Metrics {
        let text = self
            .get()
            .unwrap_or_else(|e| panic!("keep-alive scrape of {}: {e}", self.addr));
        self.scrapes += 1;
        Metrics::parse(&text).unwrap_or_else(|e| panic!("bad /metrics exposition: {e}\n{text}"))
    }

    /// Scrapes every 200 ms until `check` accepts one (returned); panics after `timeout` with
    /// `describe` of the last.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        mut check: impl FnMut(&Metrics) -> bool,
        describe: impl Fn(&Metrics) -> String,
    ) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            if check(&m) {
                return m;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?}: {}", describe(&m));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}
