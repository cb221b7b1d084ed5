//! Black-box tests over HTTP against a real trellis server.
