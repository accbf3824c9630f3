//! Cross-crate integration tests: real `kodomasu` processes against a real PostgreSQL.
//! The tests live in `tests/tests/`; run them with `bash scripts/test.sh`.
