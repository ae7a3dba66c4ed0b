//! smtp-tls integration tests: real TCP and TLS on 127.0.0.1 against the
//! testkit's capture server, one binary so the suite links once.

mod policies;
