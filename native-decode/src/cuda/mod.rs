#![allow(unsafe_code)]
//! stub
