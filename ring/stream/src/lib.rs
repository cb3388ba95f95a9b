//! placeholder: the ring stream protocol (client and hub).
