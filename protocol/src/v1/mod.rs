//! The sans-IO msgr v1 session state machine (connect and accept sides).
