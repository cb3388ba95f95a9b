//! Reference implementations of other consistent-hash algorithms, for measurement only.
