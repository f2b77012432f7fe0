//! Property-based fuzzing of the ingest parsers (being written).
