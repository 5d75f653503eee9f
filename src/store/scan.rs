//! Whole-segment scans of fast fields through a mapping that ends with the scan.
//!
//! The warmers (timelines, `request_id` filters, summary partials) and the deduplication's
//! filter read every value of a segment's columns once. Read through the segment's own
//! memory mapping, each page they touch stays in the process's resident set for as long as the
//! segment is served, though searches later need few of them: at 10M events that was ~300 MiB
//! of mapped `.fast` pages before the first query. A [`ScanDirectory`] maps the segment's
//! `.fast` file a second time for the scan; when the scan's columns are dropped the mapping
//! goes, and the pages stay only in the kernel's page cache, which it may reclaim.
//!
//! An index held in memory (tests) has no files to map: its scans read the segment's own
//! columns.

use std::path::Path;
use std::sync::Arc;

use tantivy::columnar::{
    Column, ColumnType, ColumnarReader, DynamicColumn, HasAssociatedColumnType, StrColumn,
};
use tantivy::directory::error::OpenReadError;
use tantivy::directory::footer::Footer;
use tantivy::directory::{Advice, Directory, MmapDirectory};
use tantivy::fastfield::FastFieldReaders;
use tantivy::{SegmentReader, TantivyError};

/// Where whole-segment scans map segment files from.
#[derive(Clone, Default)]
pub struct ScanDirectory {
    /// `None`: scans read the segments' own mappings.
    directory: Option<Arc<MmapDirectory>>,
}

impl std::fmt::Debug for ScanDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanDirectory")
            .field("own_mappings", &self.directory.is_some())
            .finish()
    }
}

impl ScanDirectory {
    /// Scans map the segment files of the index in `index_dir` for themselves (read ahead
    /// sequentially).
    pub fn open(index_dir: &Path) -> tantivy::Result<ScanDirectory> {
        let directory = MmapDirectory::open_with_madvice(index_dir, Advice::Sequential)?;
        Ok(ScanDirectory {
            directory: Some(Arc::new(directory)),
        })
    }

    /// Scans read the segments' own mappings (an index in memory).
    pub fn in_place() -> ScanDirectory {
        ScanDirectory::default()
    }

    /// The fast-field columns of `segment` for one scan: drop them when it ends. A segment
    /// whose files are gone (replaced by a merge, still served) is read through its own mapping.
    pub fn columns(&self, segment: &SegmentReader) -> tantivy::Result<FastColumns> {
        let Some(directory) = &self.directory else {
            return Ok(FastColumns::mapped(segment));
        };
        let path = format!("{}.fast", segment.segment_id().uuid_string());
        let file = match directory.open_read(Path::new(&path)) {
            Ok(file) => file,
            // A merge replaced the segment and its files were deleted while a searcher still
            // serves it: only the segment's own mapping still reaches its data.
            Err(OpenReadError::FileDoesNotExist(_)) => return Ok(FastColumns::mapped(segment)),
            Err(error) => return Err(error.into()),
        };
        let (footer, body) = Footer::extract_footer(file)?;
        footer.is_compatible().map_err(OpenReadError::from)?;
        Ok(FastColumns {
            source: Source::Scan(ColumnarReader::open(body)?),
        })
    }
}

/// A segment's fast-field columns, read either through the segment's own mapping or through
/// a scan's (see [`ScanDirectory::columns`]). Field names are the schema's (no JSON paths).
pub struct FastColumns {
    source: Source,
}

enum Source {
    Segment(FastFieldReaders),
    Scan(ColumnarReader),
}

impl FastColumns {
    /// The columns of `segment` through its own mapping.
    pub fn mapped(segment: &SegmentReader) -> FastColumns {
        FastColumns {
            source: Source::Segment(segment.fast_fields().clone()),
        }
    }

    pub fn i64(&self, field: &str) -> tantivy::Result<Column<i64>> {
        self.required(field)
    }

    pub fn u64(&self, field: &str) -> tantivy::Result<Column<u64>> {
        self.required(field)
    }

    pub fn bool(&self, field: &str) -> tantivy::Result<Column<bool>> {
        self.required(field)
    }

    /// The column of `field` as term ordinals with their dictionary; `None` if no document of
    /// the segment has a value.
    pub fn str(&self, field: &str) -> tantivy::Result<Option<StrColumn>> {
        match &self.source {
            Source::Segment(fast_fields) => fast_fields.str(field),
            Source::Scan(columnar) => {
                Ok(open_typed(columnar, field, ColumnType::Str)?
                    .and_then(Option::<StrColumn>::from))
            }
        }
    }

    /// The column of `field`, an error when it is missing, as Tantivy's own readers answer.
    fn required<T>(&self, field: &str) -> tantivy::Result<Column<T>>
    where
        T: PartialOrd + Copy + HasAssociatedColumnType + Send + Sync + 'static,
        DynamicColumn: Into<Option<Column<T>>>,
    {
        let column = match &self.source {
            Source::Segment(fast_fields) => fast_fields.column_opt(field)?,
            Source::Scan(columnar) => {
                open_typed(columnar, field, T::column_type())?.and_then(DynamicColumn::into)
            }
        };
        column.ok_or_else(|| {
            TantivyError::SchemaError(format!(
                "Field `{field}` is missing or is not configured as a fast field."
            ))
        })
    }
}

/// The column named `field` of type `column_type`, if the segment has one.
fn open_typed(
    columnar: &ColumnarReader,
    field: &str,
    column_type: ColumnType,
) -> std::io::Result<Option<DynamicColumn>> {
    columnar
        .read_columns(field)?
        .into_iter()
        .find(|handle| handle.column_type() == column_type)
        .map(|handle| handle.open())
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::{build_schema, fast};

    fn index_on_disk(dir: &Path) -> (tantivy::Index, crate::store::Fields, tantivy::IndexWriter) {
        let (schema, fields) = build_schema();
        let index = tantivy::Index::create_in_dir(dir, schema).unwrap();
        let writer = index.writer(15_000_000).unwrap();
        (index, fields, writer)
    }

    /// Reads every column kind both ways over an index on disk: the scan's values are the
    /// segment's own, and the scan's mapping is gone once its columns are dropped.
    #[test]
    fn a_scan_reads_the_segments_own_values_through_a_mapping_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (index, fields, mut writer) = index_on_disk(dir.path());
        for i in 0..300u64 {
            let mut doc = tantivy::TantivyDocument::default();
            doc.add_i64(fields.timestamp, 1_000 + i as i64);
            doc.add_u64(fields.seq, i);
            doc.add_u64(fields.action, i % 5);
            doc.add_bool(fields.success, i % 3 == 0);
            if i % 2 == 0 {
                doc.add_text(fields.secret_path, format!("a/{}", i % 7));
            }
            writer.add_document(doc).unwrap();
        }
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let segment = searcher.segment_reader(0);
        let scan = ScanDirectory::open(dir.path()).unwrap();
        let fast_file = dir
            .path()
            .join(format!("{}.fast", segment.segment_id().uuid_string()));
        let mappings_of_fast_file = || {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            maps.lines()
                .filter(|line| line.ends_with(fast_file.to_str().unwrap()))
                .count()
        };
        let mapped_by_the_segment = mappings_of_fast_file();
        {
            let scanned = scan.columns(segment).unwrap();
            assert!(matches!(scanned.source, Source::Scan(_)));
            assert_eq!(mappings_of_fast_file(), mapped_by_the_segment + 1);
            let own = FastColumns::mapped(segment);
            for doc in 0..segment.max_doc() {
                let pair = |a: Option<i64>, b: Option<i64>| assert_eq!(a, b, "doc {doc}");
                let i64s = |c: &FastColumns| c.i64(fast::TIMESTAMP).unwrap().first(doc);
                pair(i64s(&scanned), i64s(&own));
                let u64s = |c: &FastColumns, f: &str| c.u64(f).unwrap().first(doc);
                assert_eq!(u64s(&scanned, fast::SEQ), u64s(&own, fast::SEQ));
                assert_eq!(u64s(&scanned, fast::ACTION), u64s(&own, fast::ACTION));
                let bools = |c: &FastColumns| c.bool(fast::SUCCESS).unwrap().first(doc);
                assert_eq!(bools(&scanned), bools(&own));
                let path = |c: &FastColumns| {
                    let column = c.str(fast::SECRET_PATH).unwrap().unwrap();
                    let ord = column.ords().first(doc)?;
                    let mut text = String::new();
                    column.ord_to_str(ord, &mut text).unwrap();
                    Some(text)
                };
                assert_eq!(path(&scanned), path(&own));
            }
            let terms = |c: &FastColumns| c.str(fast::REQUEST_ID).unwrap().map(|c| c.num_terms());
            assert_eq!(terms(&scanned), terms(&own));
            assert!(scanned.u64("no_such_field").is_err());
        }
        assert_eq!(mappings_of_fast_file(), mapped_by_the_segment);
    }

    #[test]
    fn a_segment_whose_files_a_merge_deleted_is_scanned_through_its_own_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let (index, fields, mut writer) = index_on_disk(dir.path());
        for i in 0..10 {
            let mut doc = tantivy::TantivyDocument::default();
            doc.add_i64(fields.timestamp, i);
            writer.add_document(doc).unwrap();
        }
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let segment = searcher.segment_reader(0);
        let fast_file = format!("{}.fast", segment.segment_id().uuid_string());
        std::fs::remove_file(dir.path().join(fast_file)).unwrap();
        let scanned = ScanDirectory::open(dir.path())
            .unwrap()
            .columns(segment)
            .unwrap();
        assert!(matches!(scanned.source, Source::Segment(_)));
        assert_eq!(scanned.i64(fast::TIMESTAMP).unwrap().first(9), Some(9));
    }

    #[test]
    fn an_index_in_memory_is_scanned_through_its_own_columns() {
        let index = crate::store::schema::one_empty_document_index();
        let searcher = index.reader().unwrap().searcher();
        let scanned = ScanDirectory::in_place()
            .columns(searcher.segment_reader(0))
            .unwrap();
        assert!(matches!(scanned.source, Source::Segment(_)));
    }
}
