//! `connectflow simulate` against the in-process pipeline.
