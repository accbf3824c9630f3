//! Activities that call external services. The Masumi and Kodosumi clients and their
//! simulators land here with the paid-job work; the engine core needs none of them.
