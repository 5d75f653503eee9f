//! The byte path of a part file: optional gzip ([`PartStream`]), then a [`HashingWriter`] that
//! hashes and counts exactly the bytes handed to the destination.

use std::io::{self, Write};

use flate2::Compression as GzLevel;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use super::Compression;

/// zlib level of gzip parts: 2 (zlib-rs's fast strategy) compresses audit JSONL about 5.4x
/// (6.8x at level 6) at several times the speed of the default 6 (docs/benchmarks.md).
const GZIP_LEVEL: u32 = 2;

/// Passes bytes through to `inner`, hashing (SHA-256) and counting exactly what `inner` accepted.
pub(super) struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Flushes `inner` and returns it with the byte count and the lowercase hex SHA-256.
    pub(super) fn finish(mut self) -> io::Result<(W, u64, String)> {
        self.inner.flush()?;
        let sha256 = hex::encode(self.hasher.finalize());
        Ok((self.inner, self.bytes, sha256))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let accepted = self.inner.write(buf)?;
        let written = &buf[..accepted];
        self.hasher.update(written);
        self.bytes += written.len() as u64;
        Ok(accepted)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where encoded bytes go: straight to the hashing writer, or through a gzip encoder first.
pub(super) enum PartStream<W: Write> {
    Plain(HashingWriter<W>),
    Gzip(Box<GzEncoder<HashingWriter<W>>>),
}

impl<W: Write> PartStream<W> {
    pub(super) fn new(compression: Compression, out: W) -> Self {
        let hashing = HashingWriter::new(out);
        match compression {
            Compression::None => PartStream::Plain(hashing),
            Compression::Gzip => {
                PartStream::Gzip(Box::new(GzEncoder::new(hashing, GzLevel::new(GZIP_LEVEL))))
            }
        }
    }

    /// Completes the gzip stream (header and trailer even when empty) and returns the hasher.
    pub(super) fn finish(self) -> io::Result<HashingWriter<W>> {
        match self {
            PartStream::Plain(hashing) => Ok(hashing),
            PartStream::Gzip(encoder) => encoder.finish(),
        }
    }
}

impl<W: Write> Write for PartStream<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PartStream::Plain(hashing) => hashing.write(buf),
            PartStream::Gzip(encoder) => encoder.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            PartStream::Plain(hashing) => hashing.write_all(buf),
            PartStream::Gzip(encoder) => encoder.write_all(buf),
        }
    }

    /// Flushes the destination. For gzip this deliberately does not force a deflate sync block
    /// (which would bloat the stream): only bytes already compressed move on, and the stream is
    /// completed by [`PartStream::finish`].
    fn flush(&mut self) -> io::Result<()> {
        match self {
            PartStream::Plain(hashing) => hashing.flush(),
            PartStream::Gzip(encoder) => encoder.get_mut().flush(),
        }
    }
}
