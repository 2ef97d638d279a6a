//! The HTTP/1.1 upgrade request (RFC 6455 section 4.2): parse, validate, answer.
#![forbid(unsafe_code)]
