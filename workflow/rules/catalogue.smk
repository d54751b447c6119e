# Rules of the 'catalogue' stage (see docs/architecture.md).
