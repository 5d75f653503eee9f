//! A segment's document store, read with its block index decoded once.
//!
//! Tantivy's `StoreReader` finds a document's block through a layered skip index that it
//! decodes again on every read: a page of 100 events spent ~15 % of its server time there at
//! 10M events (docs/benchmarks.md, issue 12). [`DocumentStore`] decodes the finest layer once
//! per segment into two arrays (each block's first document and byte offset), so that finding a
//! block is a binary search, and keeps its own cache of decompressed blocks.
//!
//! The format read is Tantivy's (`store/` in tantivy 0.27), the same that
//! [`super::source::stored_bytes`] reads documents in:
//! - the file ends with a 28-byte footer: the store version (`u32`), the offset where the
//!   skip index starts (`u64`), the compressor id (`u8`), 15 reserved bytes, all little-endian;
//! - the skip index starts with its layers' end offsets (a VInt count, then VInts); the last
//!   layer lists every block as checkpoint blocks: a VInt count, the first document and byte
//!   offset, then per block its document count and byte length;
//! - a decompressed block ends with its documents' start offsets (`u32` each) and their count.
//!
//! Anything else (another version or compressor, an index that does not add up) makes
//! [`DocumentStore::open`] return `None`, and the caller reads through Tantivy. The unit tests
//! compare every document with Tantivy's own reading, so a format change in an upgrade fails
//! them.

use std::io;
use std::num::NonZeroUsize;
use std::ops::Range;

use lru::LruCache;
use parking_lot::Mutex;
use tantivy::directory::OwnedBytes;
use tantivy::index::SegmentComponent;
use tantivy::store::StoreReader;
use tantivy::{DocId, SegmentReader};

use super::source::read_vint;

/// Footer length: version, skip-index offset, compressor id, reserved bytes.
const FOOTER_BYTES: usize = 4 + 8 + 1 + 15;
/// The store version whose layout this module reads (Tantivy's `DocStoreVersion::V2`).
const SUPPORTED_VERSION: u32 = 2;
/// Tantivy's compressor ids.
const UNCOMPRESSED: u8 = 0;
const ZSTD: u8 = 4;

/// One segment's stored documents, as raw bytes (see [`super::source::stored_bytes`]).
pub enum SegmentDocuments {
    /// Read with the block index decoded once (the usual case).
    Indexed(DocumentStore),
    /// Read through Tantivy: a store this module does not read.
    Tantivy(StoreReader),
}

impl SegmentDocuments {
    /// Opens `segment`'s document store, keeping up to `cache_blocks` decompressed blocks.
    /// A store this module cannot open or read is left to Tantivy.
    pub fn open(segment: &SegmentReader, cache_blocks: usize) -> io::Result<Self> {
        match DocumentStore::open(segment, cache_blocks) {
            Ok(Some(store)) => return Ok(SegmentDocuments::Indexed(store)),
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "document store read through Tantivy"),
        }
        Ok(SegmentDocuments::Tantivy(
            segment.get_store_reader(cache_blocks)?,
        ))
    }

    /// The stored bytes of document `doc`.
    pub fn document(&self, doc: DocId) -> tantivy::Result<OwnedBytes> {
        match self {
            SegmentDocuments::Indexed(store) => Ok(store.document(doc)?),
            SegmentDocuments::Tantivy(reader) => reader.get_document_bytes(doc),
        }
    }
}

/// A segment's document store with its block index in two arrays.
pub struct DocumentStore {
    /// The compressed blocks, back to back.
    blocks: OwnedBytes,
    /// Each block's first document, then the segment's document count.
    first_docs: Vec<DocId>,
    /// Each block's byte offset in `blocks`, then the end of the last one.
    offsets: Vec<usize>,
    compressed: bool,
    cache: Mutex<LruCache<usize, OwnedBytes>>,
}

impl DocumentStore {
    /// Opens `segment`'s store through the index's own directory (the mapping the segment
    /// already holds). `None` when the store is not in the form this module reads.
    pub fn open(segment: &SegmentReader, cache_blocks: usize) -> io::Result<Option<Self>> {
        let file = segment
            .open_read(SegmentComponent::Store)
            .map_err(io::Error::other)?;
        let bytes = file.read_bytes()?;
        Ok(Self::parse(bytes, cache_blocks))
    }

    fn parse(file: OwnedBytes, cache_blocks: usize) -> Option<Self> {
        let footer_start = file.len().checked_sub(FOOTER_BYTES)?;
        let footer = &file.as_slice()[footer_start..];
        let version = u32::from_le_bytes(footer[..4].try_into().ok()?);
        let index_start =
            usize::try_from(u64::from_le_bytes(footer[4..12].try_into().ok()?)).ok()?;
        let compressed = match footer[12] {
            ZSTD => true,
            UNCOMPRESSED => false,
            _ => return None,
        };
        if version != SUPPORTED_VERSION || index_start > footer_start {
            return None;
        }
        let (first_docs, offsets) = finest_layer(&file.as_slice()[index_start..footer_start])?;
        let blocks = file.slice(0..index_start);
        // Offsets only grow (`finest_layer` adds lengths): the last one must be inside the file.
        let adds_up = offsets.last().is_some_and(|&end| end <= blocks.len());
        adds_up.then(|| DocumentStore {
            blocks,
            first_docs,
            offsets,
            compressed,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(cache_blocks).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    /// The stored bytes of document `doc`.
    pub fn document(&self, doc: DocId) -> io::Result<OwnedBytes> {
        let block = self
            .first_docs
            .partition_point(|&first| first <= doc)
            .checked_sub(1)
            .filter(|&block| block + 1 < self.first_docs.len())
            .ok_or_else(|| invalid(format!("no stored document {doc}")))?;
        let bytes = self.block(block)?;
        let range = document_range(&bytes, doc - self.first_docs[block])
            .ok_or_else(|| invalid(format!("stored document {doc} is outside its block")))?;
        Ok(bytes.slice(range))
    }

    /// Block `block`, decompressed (from the cache when it holds it).
    fn block(&self, block: usize) -> io::Result<OwnedBytes> {
        if let Some(bytes) = self.cache.lock().get(&block) {
            return Ok(bytes.clone());
        }
        let stored = &self.blocks.as_slice()[self.offsets[block]..self.offsets[block + 1]];
        let bytes = if self.compressed {
            OwnedBytes::new(decompress(stored)?)
        } else {
            OwnedBytes::new(stored.to_vec())
        };
        self.cache.lock().put(block, bytes.clone());
        Ok(bytes)
    }
}

/// A zstd block as Tantivy writes it: its decompressed length (`u32`), then one frame.
fn decompress(stored: &[u8]) -> io::Result<Vec<u8>> {
    let (length, frame) = stored
        .split_first_chunk::<4>()
        .ok_or_else(|| invalid("a document-store block is shorter than its header"))?;
    let length = u32::from_le_bytes(*length) as usize;
    let mut bytes = vec![0; length];
    let written = zstd::bulk::decompress_to_buffer(frame, &mut bytes)?;
    if written != length {
        return Err(invalid("a document-store block did not decompress whole"));
    }
    Ok(bytes)
}

/// Each block's first document and byte offset, from the skip index's finest (last) layer,
/// each with an end entry.
fn finest_layer(index: &[u8]) -> Option<(Vec<DocId>, Vec<usize>)> {
    let mut rest = index;
    let layers = read_vint(&mut rest)?;
    let mut layer_ends = Vec::new();
    for _ in 0..layers {
        layer_ends.push(usize::try_from(read_vint(&mut rest)?).ok()?);
    }
    let start = match layer_ends.len() {
        0 => return Some((vec![0], vec![0])),
        1 => 0,
        n => layer_ends[n - 2],
    };
    let mut layer = rest.get(start..*layer_ends.last()?)?;
    let (mut first_docs, mut offsets) = (Vec::new(), Vec::new());
    let (mut doc, mut offset) = (0u32, 0usize);
    while !layer.is_empty() {
        let count = read_vint(&mut layer)?;
        if count == 0 {
            continue;
        }
        // Blocks follow each other: each checkpoint block starts where the last one ended.
        let contiguous = u32::try_from(read_vint(&mut layer)?).ok()? == doc
            && usize::try_from(read_vint(&mut layer)?).ok()? == offset;
        if !contiguous {
            return None;
        }
        for _ in 0..count {
            first_docs.push(doc);
            offsets.push(offset);
            doc = doc.checked_add(u32::try_from(read_vint(&mut layer)?).ok()?)?;
            offset = offset.checked_add(usize::try_from(read_vint(&mut layer)?).ok()?)?;
        }
    }
    first_docs.push(doc);
    offsets.push(offset);
    Some((first_docs, offsets))
}

/// The byte range of the `position`-th document of a decompressed block.
fn document_range(block: &[u8], position: DocId) -> Option<Range<usize>> {
    let (rest, count) = block.split_last_chunk::<4>()?;
    let count = u32::from_le_bytes(*count) as usize;
    let position = position as usize;
    let index_start = rest.len().checked_sub(count.checked_mul(4)?)?;
    let offset_at = |at: usize| -> Option<usize> {
        let bytes = block.get(index_start + at * 4..index_start + at * 4 + 4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    if position >= count {
        return None;
    }
    let start = offset_at(position)?;
    let end = if position + 1 < count {
        offset_at(position + 1)?
    } else {
        index_start
    };
    (start <= end && end <= index_start).then_some(start..end)
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::schema::{STORED, Schema, TEXT};
    use tantivy::store::{Compressor, ZstdCompressor};
    use tantivy::{Index, IndexSettings, IndexWriter, TantivyDocument};

    /// An index of `segments` segments of `per_segment` documents of varied sizes, some deleted.
    fn index(compressor: Compressor, block_bytes: usize, segments: u32, per_segment: u32) -> Index {
        let settings = IndexSettings {
            docstore_compression: compressor,
            docstore_blocksize: block_bytes,
            ..IndexSettings::default()
        };
        index_with(settings, segments, per_segment)
    }

    fn index_with(settings: IndexSettings, segments: u32, per_segment: u32) -> Index {
        let mut builder = Schema::builder();
        let text = builder.add_text_field("text", TEXT | STORED);
        let number = builder.add_u64_field("number", STORED | tantivy::schema::INDEXED);
        let index = Index::builder()
            .schema(builder.build())
            .settings(settings)
            .create_in_ram()
            .unwrap();
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for segment in 0..segments {
            for i in 0..per_segment {
                let n = u64::from(segment * per_segment + i);
                let mut doc = TantivyDocument::default();
                doc.add_text(
                    text,
                    format!("event {n} {}", "x".repeat((n % 97) as usize * 7)),
                );
                doc.add_u64(number, n);
                writer.add_document(doc).unwrap();
            }
            writer.commit().unwrap();
        }
        writer.delete_term(tantivy::Term::from_field_u64(number, 5));
        writer.commit().unwrap();
        index
    }

    fn assert_reads_as_tantivy(index: &Index) {
        let searcher = index.reader().unwrap().searcher();
        let mut documents = 0;
        for segment in searcher.segment_readers() {
            let store = DocumentStore::open(segment, 4)
                .unwrap()
                .expect("a readable store");
            let tantivy = segment.get_store_reader(4).unwrap();
            for doc in (0..segment.max_doc()).chain((0..segment.max_doc()).rev()) {
                let expected = tantivy.get_document_bytes(doc).unwrap();
                assert_eq!(store.document(doc).unwrap().as_slice(), expected.as_slice());
                documents += 1;
            }
            assert!(store.document(segment.max_doc()).is_err());
        }
        assert!(documents > 0);
    }

    #[test]
    fn every_document_reads_as_tantivy_reads_it() {
        let zstd = Compressor::Zstd(ZstdCompressor::default());
        // Small blocks: hundreds of them per segment, so the skip index has several layers.
        let many_blocks = index(zstd, 512, 3, 3_000);
        let searcher = many_blocks.reader().unwrap().searcher();
        let segment = &searcher.segment_readers()[0];
        let store = DocumentStore::open(segment, 4).unwrap().unwrap();
        assert!(
            store.first_docs.len() > 300,
            "{} blocks",
            store.first_docs.len()
        );
        assert_reads_as_tantivy(&many_blocks);
        assert_reads_as_tantivy(&index(zstd, 64 * 1024, 2, 50));
        assert_reads_as_tantivy(&index(Compressor::None, 2048, 2, 500));
    }

    #[test]
    fn the_stores_own_settings_are_read_here() {
        let index = index_with(super::super::index_settings(), 2, 1_000);
        assert_reads_as_tantivy(&index);
        let searcher = index.reader().unwrap().searcher();
        for segment in searcher.segment_readers() {
            let documents = SegmentDocuments::open(segment, 4).unwrap();
            assert!(matches!(documents, SegmentDocuments::Indexed(_)));
        }
    }

    #[test]
    fn a_store_in_another_form_is_left_to_tantivy() {
        let index = index(Compressor::None, 2048, 1, 10);
        let searcher = index.reader().unwrap().searcher();
        let segment = &searcher.segment_readers()[0];
        let file = segment.open_read(SegmentComponent::Store).unwrap();
        let bytes = file.read_bytes().unwrap().as_slice().to_vec();
        let footer = bytes.len() - FOOTER_BYTES;
        let parses = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut edited = bytes.clone();
            edit(&mut edited);
            DocumentStore::parse(OwnedBytes::new(edited), 4).is_some()
        };
        assert!(parses(&|_| {}));
        assert!(!parses(&|bytes| bytes[footer] = 1), "store version 1");
        assert!(!parses(&|bytes| bytes[footer + 12] = 1), "lz4 blocks");
        assert!(
            !parses(&|bytes| bytes[footer + 4] = 0xff),
            "skip index past the end"
        );
        for length in 0..bytes.len() {
            // Truncated stores are refused or read, never a panic.
            let _ = DocumentStore::parse(OwnedBytes::new(bytes[..length].to_vec()), 4);
        }
    }

    #[test]
    fn the_cache_keeps_the_blocks_read_last() {
        let index = index(Compressor::Zstd(ZstdCompressor::default()), 512, 1, 2_000);
        let searcher = index.reader().unwrap().searcher();
        let store = DocumentStore::open(&searcher.segment_readers()[0], 2)
            .unwrap()
            .unwrap();
        let last = *store.first_docs.last().unwrap() - 1;
        store.document(0).unwrap();
        store.document(last).unwrap();
        let cached: Vec<usize> = store.cache.lock().iter().map(|(block, _)| *block).collect();
        assert_eq!(cached, vec![store.first_docs.len() - 2, 0]);
    }
}
