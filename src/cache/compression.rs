//! The compressions Nix writes NARs with, decoded with bounded memory.
//!
//! Each decoder's memory is capped at a constant, so a crafted stream cannot make
//! the server allocate more than [`decoder_memory`] says; a stream that needs more
//! is refused. The caps are far above what Nix's default levels need (xz -6: 9 MiB,
//! zstd -3: 2 MiB of window).

use std::io::{self, BufRead, Read};

/// Memory liblzma may use to decode an xz or lzip stream: enough for every xz
/// preset up to `-9e` (65 MiB) and every lzip level (`-9`: 33 MiB).
pub const XZ_MEMLIMIT: u64 = 96 << 20;
/// Largest zstd window decoded, as a power of two: 128 MiB, what `zstd --ultra -22`
/// and `--long=27` write. The zstd default refuses more than 2^27 too.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// The standard brotli window is at most 16 MiB; "large window" streams (up to
/// 1 GiB, a non-standard extension Nix never writes) are refused by the decoder.
const BROTLI_WINDOW_MAX: u64 = 16 << 20;
/// bzip2's largest block (900 kB) takes under 4 MiB to decode.
const BZIP2_MEMORY: u64 = 4 << 20;
/// An lz4 frame's blocks are at most 4 MiB (8 MiB in the legacy format); the decoder
/// holds one compressed and one decompressed block.
const LZ4_MEMORY: u64 = 17 << 20;
/// Decoder state beyond the window (tables, input buffer), generously.
const DECODER_OVERHEAD: u64 = 1 << 20;

/// How a NAR file is compressed, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `.nar`
    None,
    /// `.nar.xz`
    Xz,
    /// `.nar.zst`
    Zstd,
    /// `.nar.bz2`
    Bzip2,
    /// `.nar.br`
    Brotli,
    /// `.nar.lzip`
    Lzip,
    /// `.nar.lz4`
    Lz4,
}

impl Compression {
    /// The compression of a NAR file with extension `ext` after `.nar` (`""`,
    /// `".xz"`, …), `None` for an extension Nix does not write.
    pub fn from_extension(ext: &str) -> Option<Self> {
        Some(match ext {
            "" => Compression::None,
            ".xz" => Compression::Xz,
            ".zst" => Compression::Zstd,
            ".bz2" => Compression::Bzip2,
            ".br" => Compression::Brotli,
            ".lzip" => Compression::Lzip,
            ".lz4" => Compression::Lz4,
            _ => return None,
        })
    }

    /// The name Nix uses for it (`Compression:` in a narinfo).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Brotli => "br",
            Compression::Lzip => "lzip",
            Compression::Lz4 => "lz4",
        }
    }
}

/// The most memory one decoder of `compression` can take, in bytes: the cap it is
/// built with plus its fixed state. For a global memory budget.
pub fn decoder_memory(compression: Compression) -> u64 {
    match compression {
        Compression::None => 0,
        Compression::Xz | Compression::Lzip => XZ_MEMLIMIT,
        Compression::Zstd => (1 << ZSTD_WINDOW_LOG_MAX) + DECODER_OVERHEAD,
        Compression::Brotli => BROTLI_WINDOW_MAX + DECODER_OVERHEAD,
        Compression::Bzip2 => BZIP2_MEMORY,
        Compression::Lz4 => LZ4_MEMORY,
    }
}

/// A decoder over the compressed bytes `R`, read as the decompressed stream.
pub enum Decoder<R: BufRead> {
    /// Uncompressed: the bytes themselves.
    None(R),
    /// xz or lzip.
    Lzma(liblzma::bufread::XzDecoder<R>),
    /// zstd.
    Zstd(zstd::stream::read::Decoder<'static, R>),
    /// bzip2, several concatenated streams allowed, as `bzip2 -d` does.
    Bzip2(bzip2::bufread::MultiBzDecoder<R>),
    /// brotli.
    Brotli(Box<brotli_decompressor::Decompressor<R>>),
    /// lz4 frames.
    Lz4(lz4_flex::frame::FrameDecoder<Lz4Frames<R>>),
}

impl<R: BufRead> Decoder<R> {
    /// A decoder of `compression` over `input`, with its memory capped.
    pub fn new(compression: Compression, input: R) -> io::Result<Self> {
        use liblzma::stream::{Stream, CONCATENATED};
        Ok(match compression {
            Compression::None => Decoder::None(input),
            // CONCATENATED: several streams may follow each other (xz -d accepts
            // that), and anything else after the last one is an error.
            Compression::Xz => Decoder::Lzma(liblzma::bufread::XzDecoder::new_stream(
                input,
                Stream::new_stream_decoder(XZ_MEMLIMIT, CONCATENATED)?,
            )),
            Compression::Lzip => Decoder::Lzma(liblzma::bufread::XzDecoder::new_stream(
                input,
                Stream::new_lzip_decoder(XZ_MEMLIMIT, CONCATENATED)?,
            )),
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(input)?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Decoder::Zstd(d)
            }
            Compression::Bzip2 => Decoder::Bzip2(bzip2::bufread::MultiBzDecoder::new(input)),
            Compression::Brotli => Decoder::Brotli(Box::new(
                brotli_decompressor::Decompressor::new(input, 64 << 10),
            )),
            Compression::Lz4 => Decoder::Lz4(lz4_flex::frame::FrameDecoder::new(Lz4Frames {
                inner: input,
                walk: FrameWalk::default(),
            })),
        })
    }

    /// The compressed input, to check that nothing follows the compressed stream.
    pub fn input(&mut self) -> &mut R {
        match self {
            Decoder::None(r) => r,
            Decoder::Lzma(d) => d.get_mut(),
            Decoder::Zstd(d) => d.get_mut(),
            Decoder::Bzip2(d) => d.get_mut(),
            Decoder::Brotli(d) => d.get_mut(),
            Decoder::Lz4(d) => &mut d.get_mut().inner,
        }
    }

    /// Whether the compressed stream read so far ends where a stream may end. Only
    /// lz4 needs asking: its decoder takes the end of the input between two blocks
    /// for the end of the frame, which other lz4 readers refuse as truncated.
    pub fn ended_cleanly(&mut self) -> bool {
        match self {
            Decoder::Lz4(d) => d.get_mut().walk.at_end(),
            _ => true,
        }
    }
}

/// The compressed input of the lz4 decoder, followed through the frame format.
pub struct Lz4Frames<R> {
    inner: R,
    walk: FrameWalk,
}

impl<R: BufRead> Read for Lz4Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.walk.feed(&buf[..n]);
        Ok(n)
    }
}

/// Where the lz4 frame format stands after the bytes fed so far: a frame is magic,
/// header, blocks (4-byte size, data, optional checksum), a zero end mark and an
/// optional checksum; a legacy frame is sized blocks up to the end or the next
/// frame; a skippable frame is a size and data.
#[derive(Default)]
struct FrameWalk {
    /// Bytes of the current fixed-size field gathered so far.
    field: Vec<u8>,
    /// What the next bytes are.
    at: Lz4Part,
    /// Bytes still to pass over (block data, skippable frame data).
    skip: u64,
    /// FLG of the current frame: block checksums (bit 4), content checksum (bit 2).
    flags: u8,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Lz4Part {
    #[default]
    Magic,
    Header,
    BlockSize,
    LegacyBlockSize,
    SkippableSize,
    Skip(Lz4After),
    ContentChecksum,
    Broken,
}

/// Where a skipped run of bytes leads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lz4After {
    Block,
    LegacyBlock,
    Frame,
}

impl Lz4After {
    fn next(self) -> Lz4Part {
        match self {
            Lz4After::Block => Lz4Part::BlockSize,
            Lz4After::LegacyBlock => Lz4Part::LegacyBlockSize,
            Lz4After::Frame => Lz4Part::Magic,
        }
    }
}

const LZ4_MAGIC: u32 = 0x184D_2204;
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;

impl FrameWalk {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.at != Lz4Part::Broken {
            if let Lz4Part::Skip(after) = self.at {
                let n = (bytes.len() as u64).min(self.skip);
                self.skip -= n;
                bytes = &bytes[n as usize..];
                if self.skip == 0 {
                    self.at = after.next();
                }
                continue;
            }
            let want = self.field_len();
            let n = (want - self.field.len()).min(bytes.len());
            self.field.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.field.len() == want {
                self.field_done();
            }
        }
    }

    fn field_len(&self) -> usize {
        match (self.at, self.field.first()) {
            // FLG and BD, then the optional content size and dictionary id, and the
            // header checksum: known once FLG is.
            (Lz4Part::Header, Some(&flg)) => {
                2 + if flg & 0x08 != 0 { 8 } else { 0 } + if flg & 0x01 != 0 { 4 } else { 0 } + 1
            }
            (Lz4Part::Header, None) => 1,
            _ => 4,
        }
    }

    fn field_done(&mut self) {
        if self.at == Lz4Part::Header && self.field.len() == 1 {
            // Now the header's length is known.
            return;
        }
        let word = match self.field[..] {
            [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
            _ => 0,
        };
        self.at = match self.at {
            Lz4Part::Magic => match word {
                LZ4_MAGIC => Lz4Part::Header,
                LZ4_LEGACY_MAGIC => Lz4Part::LegacyBlockSize,
                0x184D_2A50..=0x184D_2A5F => Lz4Part::SkippableSize,
                _ => Lz4Part::Broken,
            },
            Lz4Part::Header => {
                self.flags = self.field[0];
                Lz4Part::BlockSize
            }
            Lz4Part::BlockSize if word == 0 => {
                if self.flags & 0x04 != 0 {
                    Lz4Part::ContentChecksum
                } else {
                    Lz4Part::Magic
                }
            }
            Lz4Part::BlockSize => {
                let checksum = if self.flags & 0x10 != 0 { 4 } else { 0 };
                self.skip = u64::from(word & 0x7fff_ffff) + checksum;
                Lz4Part::Skip(Lz4After::Block)
            }
            // A legacy frame ends where another frame's magic stands for a size.
            Lz4Part::LegacyBlockSize if word == LZ4_MAGIC => Lz4Part::Header,
            Lz4Part::LegacyBlockSize if word == LZ4_LEGACY_MAGIC => Lz4Part::LegacyBlockSize,
            Lz4Part::LegacyBlockSize => {
                self.skip = u64::from(word);
                Lz4Part::Skip(Lz4After::LegacyBlock)
            }
            Lz4Part::SkippableSize => {
                self.skip = u64::from(word);
                Lz4Part::Skip(Lz4After::Frame)
            }
            Lz4Part::ContentChecksum => Lz4Part::Magic,
            Lz4Part::Skip(_) | Lz4Part::Broken => Lz4Part::Broken,
        };
        if let (Lz4Part::Skip(after), 0) = (self.at, self.skip) {
            self.at = after.next();
        }
        self.field.clear();
    }

    /// Whether the input may end here: between frames, or between legacy blocks.
    fn at_end(&self) -> bool {
        self.field.is_empty() && matches!(self.at, Lz4Part::Magic | Lz4Part::LegacyBlockSize)
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::None(r) => r.read(buf),
            Decoder::Lzma(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Bzip2(d) => d.read(buf),
            Decoder::Brotli(d) => d.read(buf),
            Decoder::Lz4(d) => d.read(buf),
        }
    }
}

/// A decoding error as one line for the client, saying so when the stream needs
/// more memory than the cap.
pub fn describe_error(compression: Compression, err: &io::Error) -> String {
    let too_big = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<liblzma::stream::Error>())
        .is_some_and(|e| matches!(e, liblzma::stream::Error::MemLimit))
        || (compression == Compression::Zstd && err.to_string().contains("too much memory"));
    if too_big {
        format!(
            "the {} stream needs more than the {} MiB of decoder memory this server allows",
            compression.name(),
            decoder_memory(compression) >> 20
        )
    } else {
        format!(
            "the {} stream does not decompress: {err}",
            compression.name()
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    fn decode(c: Compression, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut d = Decoder::new(c, bytes)?;
        let mut out = Vec::new();
        d.read_to_end(&mut out)?;
        Ok(out)
    }

    /// `data` xz-compressed at `preset`.
    pub(crate) fn xz(data: &[u8], preset: u32) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), preset);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn every_extension_nix_writes_is_known() {
        for ext in crate::cache::key::NAR_EXTENSIONS {
            assert!(Compression::from_extension(ext).is_some(), "{ext}");
        }
        assert_eq!(Compression::from_extension(".gz"), None);
    }

    #[test]
    fn decodes_and_refuses_trailing_garbage() {
        let data = b"some bytes of a NAR".repeat(1000);
        let packed = xz(&data, 6);
        assert_eq!(decode(Compression::Xz, &packed).unwrap(), data);
        let mut trailing = packed.clone();
        trailing.extend_from_slice(b"junk");
        assert!(decode(Compression::Xz, &trailing).is_err());
        assert!(decode(Compression::Xz, &packed[..packed.len() - 1]).is_err());

        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(decode(Compression::Zstd, &z).unwrap(), data);
        let mut trailing = z.clone();
        trailing.extend_from_slice(b"junk");
        assert!(decode(Compression::Zstd, &trailing).is_err());
        assert!(decode(Compression::Zstd, &z[..z.len() - 1]).is_err());
    }

    #[test]
    fn an_lz4_stream_must_end_with_its_frame() {
        let data = b"lz4 frames ".repeat(100_000);
        let mut info = lz4_flex::frame::FrameInfo::new();
        info.block_checksums = true;
        info.content_checksum = true;
        let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        e.write_all(&data).unwrap();
        let packed = e.finish().unwrap();
        for cut in [0, 3, 4, 8, 12] {
            let bytes = &packed[..packed.len() - cut];
            let mut d = Decoder::new(Compression::Lz4, bytes).unwrap();
            let mut out = Vec::new();
            let decoded = d.read_to_end(&mut out).is_ok();
            assert_eq!(decoded && d.ended_cleanly(), cut == 0, "cut {cut}");
        }
    }

    #[test]
    fn xz_beyond_the_memory_limit_is_refused_with_a_reason() {
        // A 128 MiB dictionary, as `xz --lzma2=dict=128MiB` writes: the header alone
        // says how much memory decoding takes.
        let mut opts = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
        opts.dict_size(128 << 20);
        let mut filters = liblzma::stream::Filters::new();
        filters.lzma2(&opts);
        let stream =
            liblzma::stream::Stream::new_stream_encoder(&filters, liblzma::stream::Check::Crc64)
                .unwrap();
        let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        e.write_all(b"tiny").unwrap();
        let packed = e.finish().unwrap();
        let err = decode(Compression::Xz, &packed).unwrap_err();
        let msg = describe_error(Compression::Xz, &err);
        assert!(msg.contains("96 MiB"), "{msg}");
    }

    #[test]
    fn zstd_beyond_the_window_limit_is_refused_with_a_reason() {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        e.set_parameter(zstd::zstd_safe::CParameter::WindowLog(28))
            .unwrap();
        // The window is declared from the content size unless it is unknown, as in
        // a stream.
        e.include_contentsize(false).unwrap();
        e.write_all(&vec![1u8; 1 << 20]).unwrap();
        let packed = e.finish().unwrap();
        let err = decode(Compression::Zstd, &packed).unwrap_err();
        let msg = describe_error(Compression::Zstd, &err);
        assert!(msg.contains("decoder memory"), "{msg}");
    }
}
