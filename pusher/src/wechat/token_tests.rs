//! The token manager against the in-process sandbox.
