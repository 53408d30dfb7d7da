//! Decompress, hash and parse a NAR file while its bytes stream past.
//!
//! The decoders and the parser are blocking `Read` code, and decompressing is CPU
//! work, so they run on a thread of their own per upload; the async side hands it the
//! chunks through a short bounded channel. Not on tokio's blocking pool: a verifier
//! waits for chunks as long as its upload lasts, and with as many uploads as the
//! pool has threads, the storage writes those uploads wait for (which run on the
//! pool) would never start. Memory is the decoder's cap
//! ([`compression::decoder_memory`]) plus [`PIPELINE_MEMORY`], whatever the size of
//! the NAR.
//!
//! Most NAR files are a few KiB, though, and for those a thread (its stack mapped,
//! then unmapped) and a parse buffer cost more than the decoding: a file that ends
//! within [`HELD_LIMIT`] is held and verified in one go on the blocking pool, which
//! it then occupies only while it decodes, never waiting for a client.

use std::io::{self, BufRead, BufReader, Read};

use bytes::{Buf, Bytes};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::compression::{self, Compression, Decoder};
use super::nar::{self, NarError};

/// Chunks in flight to the decoding thread.
const CHANNEL_CHUNKS: usize = 8;
/// Read-ahead between the decoder and the NAR parser.
const PARSE_BUFFER: usize = 256 << 10;
/// Memory of one verification besides the decoder: the chunks in flight (a request
/// body's chunks are at most a few hundred KiB), the parse buffer, and the parser's
/// per-directory names ([`nar::MAX_DEPTH`] x [`nar::MAX_NAME_LEN`]).
pub const PIPELINE_MEMORY: u64 = 8 << 20;
/// Files up to this size are held and verified once they end (see the module doc);
/// within [`PIPELINE_MEMORY`].
const HELD_LIMIT: usize = 256 << 10;
/// The parse buffer of a held file: its bytes are in memory already, so a small one
/// serves (and comes from the heap, not a fresh mapping).
const HELD_PARSE_BUFFER: usize = 16 << 10;

/// Memory one NAR verification of `compression` takes at most, for a global budget.
pub fn verify_memory(compression: Compression) -> u64 {
    compression::decoder_memory(compression) + PIPELINE_MEMORY
}

/// What a NAR file decodes to: its `NarHash` and `NarSize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarDigest {
    /// SHA-256 of the uncompressed NAR.
    pub nar_hash: [u8; 32],
    /// Length of the uncompressed NAR.
    pub nar_size: u64,
}

/// Why a verification gave no digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The file is not a valid NAR (of its compression): the uploader's doing.
    #[error("{0}")]
    Invalid(String),
    /// The server could not finish verifying it (no thread for it, or it stopped).
    #[error("NAR verification failed on the server: {0}")]
    Internal(String),
}

type Verdict = Result<Option<NarDigest>, VerifyError>;

/// A verification in progress; see the module doc.
pub struct NarVerifier {
    compression: Compression,
    hash: bool,
    /// Files up to this size are held (see the module doc).
    held_limit: usize,
    stage: Stage,
}

enum Stage {
    /// The file so far, while it is within [`HELD_LIMIT`].
    Held(Vec<u8>),
    /// Streaming to the verifying thread.
    Streaming {
        tx: mpsc::Sender<Bytes>,
        verdict: oneshot::Receiver<Verdict>,
    },
    /// The thread could not be started.
    Failed(String),
}

impl NarVerifier {
    /// Starts verifying a file of `compression`. With `hash` false the uncompressed
    /// bytes are not hashed (for an uncompressed NAR the caller hashes the file
    /// anyway), and [`NarVerifier::finish`] returns no digest.
    pub fn start(compression: Compression, hash: bool) -> Self {
        NarVerifier {
            compression,
            hash,
            held_limit: HELD_LIMIT,
            stage: Stage::Held(Vec::new()),
        }
    }

    /// Passes on the next chunk of the file. `false` when verification already
    /// failed: [`NarVerifier::finish`] says why.
    pub async fn feed(&mut self, chunk: Bytes) -> bool {
        if let Stage::Held(held) = &mut self.stage {
            if held.len() + chunk.len() <= self.held_limit {
                held.extend_from_slice(&chunk);
                return true;
            }
            let held = Bytes::from(std::mem::take(held));
            self.stage = self.stream();
            if !held.is_empty() && !self.send(held).await {
                return false;
            }
        }
        self.send(chunk).await
    }

    /// The verifying thread, started.
    fn stream(&self) -> Stage {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let (done, verdict) = oneshot::channel();
        let (compression, hash) = (self.compression, self.hash);
        let started = std::thread::Builder::new()
            .name("nar-verify".into())
            .spawn(move || {
                let input = ChunkReader {
                    rx,
                    cur: Bytes::new(),
                };
                let verdict = verify(compression, hash, input, PARSE_BUFFER);
                let _ = done.send(verdict.map_err(VerifyError::Invalid));
            });
        match started {
            Ok(_) => Stage::Streaming { tx, verdict },
            Err(e) => Stage::Failed(format!("no thread for it: {e}")),
        }
    }

    async fn send(&mut self, chunk: Bytes) -> bool {
        match &self.stage {
            Stage::Streaming { tx, .. } => tx.send(chunk).await.is_ok(),
            Stage::Held(_) | Stage::Failed(_) => false,
        }
    }

    /// Ends the file and waits for the verdict: the digest (with `hash`), or why
    /// the file is not a valid NAR, as one line.
    pub async fn finish(self) -> Verdict {
        let NarVerifier {
            compression,
            hash,
            stage,
            ..
        } = self;
        let stopped = || VerifyError::Internal("it stopped without a verdict".into());
        match stage {
            Stage::Held(held) => tokio::task::spawn_blocking(move || {
                verify(compression, hash, io::Cursor::new(held), HELD_PARSE_BUFFER)
                    .map_err(VerifyError::Invalid)
            })
            .await
            .unwrap_or_else(|_| Err(stopped())),
            Stage::Streaming { tx, verdict } => {
                // The end of the file, for the thread.
                drop(tx);
                verdict.await.unwrap_or_else(|_| Err(stopped()))
            }
            Stage::Failed(why) => Err(VerifyError::Internal(why)),
        }
    }
}

/// Where the verification reads the file from.
trait Input: BufRead {
    /// Reads to the end; whether nothing was left.
    fn drained(&mut self) -> bool;
}

impl Input for io::Cursor<Vec<u8>> {
    fn drained(&mut self) -> bool {
        self.position() >= self.get_ref().len() as u64
    }
}

/// Decodes, hashes and parses the whole of `input`.
fn verify(
    compression: Compression,
    hash: bool,
    input: impl Input,
    parse_buffer: usize,
) -> Result<Option<NarDigest>, String> {
    let decoder = Decoder::new(compression, input).map_err(|e| e.to_string())?;
    let mut reader = BufReader::with_capacity(
        parse_buffer,
        Tee {
            inner: decoder,
            hasher: hash.then(Sha256::new),
            size: 0,
        },
    );
    let parsed = nar::validate(&mut reader);
    let tee = reader.into_inner();
    match parsed {
        Ok(()) => {}
        Err(NarError::Io(e)) => return Err(compression::describe_error(compression, &e)),
        Err(e) if compression == Compression::None => return Err(e.to_string()),
        Err(e) => return Err(format!("the {} stream holds {e}", compression.name())),
    }
    let Tee {
        inner: mut decoder,
        hasher,
        size,
    } = tee;
    // The decoder stopped at the end of its stream; anything after it is not NAR
    // (brotli says so only when asked once more).
    let mut probe = [0u8; 1];
    let tail = decoder.read(&mut probe);
    if !decoder.ended_cleanly() {
        return Err(format!("the {} stream is truncated", compression.name()));
    }
    if !matches!(tail, Ok(0)) || !decoder.input().drained() {
        return Err(format!(
            "data after the end of the {} stream",
            compression.name()
        ));
    }
    Ok(hasher.map(|h| NarDigest {
        nar_hash: h.finalize().into(),
        nar_size: size,
    }))
}

/// Hashes and counts what is read through it.
struct Tee<R> {
    inner: R,
    hasher: Option<Sha256>,
    size: u64,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        self.size += n as u64;
        Ok(n)
    }
}

/// The chunks from the async side as one blocking reader.
struct ChunkReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Input for ChunkReader {
    /// Whether nothing but empty chunks came.
    fn drained(&mut self) -> bool {
        self.cur.is_empty() && std::iter::from_fn(|| self.rx.blocking_recv()).all(|c| c.is_empty())
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.cur = chunk,
                None => break,
            }
        }
        Ok(&self.cur)
    }

    fn consume(&mut self, amt: usize) {
        self.cur.advance(amt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::nar::tests::file_nar;
    use std::io::Write;

    /// The verdict on `file` fed in chunks of `chunk` bytes, held or streamed as its
    /// size says, or streamed from the first byte with `streamed`.
    async fn verdict(
        c: Compression,
        file: &[u8],
        chunk: usize,
        streamed: bool,
    ) -> Result<Option<NarDigest>, String> {
        let mut v = NarVerifier::start(c, true);
        if streamed {
            v.held_limit = 0;
        }
        for part in file.chunks(chunk) {
            if !v.feed(Bytes::copy_from_slice(part)).await {
                break;
            }
        }
        v.finish().await.map_err(|e| e.to_string())
    }

    /// The verdict, which must be the same held and streamed.
    async fn run(c: Compression, file: &[u8], chunk: usize) -> Result<Option<NarDigest>, String> {
        let held = verdict(c, file, chunk, false).await;
        assert_eq!(held, verdict(c, file, chunk, true).await, "{c:?}, {chunk}");
        held
    }

    #[tokio::test]
    async fn digests_the_uncompressed_nar() {
        let nar = file_nar(&b"contents ".repeat(50_000));
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(&nar).unwrap();
        let xz = e.finish().unwrap();
        let want = NarDigest {
            nar_hash: Sha256::digest(&nar).into(),
            nar_size: nar.len() as u64,
        };
        for chunk in [1, 7, 4096, 1 << 20] {
            assert_eq!(run(Compression::Xz, &xz, chunk).await, Ok(Some(want)));
            assert_eq!(run(Compression::None, &nar, chunk).await, Ok(Some(want)));
        }
    }

    #[tokio::test]
    async fn held_and_streamed_files_get_the_same_verdicts() {
        // Around the limit, in chunks that cross it or land on it.
        for len in [HELD_LIMIT - 200, HELD_LIMIT - 100, HELD_LIMIT + 1000] {
            let nar = file_nar(&vec![b'n'; len - 200]);
            let want = NarDigest {
                nar_hash: Sha256::digest(&nar).into(),
                nar_size: nar.len() as u64,
            };
            for chunk in [1000, HELD_LIMIT - 200, HELD_LIMIT] {
                assert_eq!(run(Compression::None, &nar, chunk).await, Ok(Some(want)));
                let mut bad = nar.clone();
                bad[10] ^= 1;
                assert!(run(Compression::None, &bad, chunk).await.is_err());
                let mut tail = nar.clone();
                tail.push(0);
                let err = run(Compression::None, &tail, chunk).await.unwrap_err();
                assert!(err.contains("after the end"), "{len} {chunk}: {err}");
            }
        }
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_nar_or_has_a_tail() {
        let nar = file_nar(b"x");
        let mut tail = nar.clone();
        tail.extend_from_slice(&[0; 8]);
        let err = run(Compression::None, &tail, 5).await.unwrap_err();
        assert!(err.contains("after the end"), "{err}");

        let z = zstd::encode_all(&b"not a NAR"[..], 3).unwrap();
        let err = run(Compression::Zstd, &z, 5).await.unwrap_err();
        assert!(err.contains("zstd stream holds not a valid NAR"), "{err}");

        let err = run(Compression::Bzip2, b"garbage", 5).await.unwrap_err();
        assert!(err.contains("does not decompress"), "{err}");

        // A valid brotli stream followed by garbage the decoder never reads.
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&nar).unwrap();
        }
        assert!(run(Compression::Brotli, &br, 3).await.is_ok());
        br.extend_from_slice(b"more");
        assert!(run(Compression::Brotli, &br, 3).await.is_err());
    }
}
