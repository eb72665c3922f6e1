//! Error-code tables shared by the sandbox (which answers with them) and the pusher (which
//! classifies them), so both sides name a code the same way and never match bare numbers.

pub mod wecom;
