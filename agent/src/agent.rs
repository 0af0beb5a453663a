//! Placeholder (datapath issue in progress).
