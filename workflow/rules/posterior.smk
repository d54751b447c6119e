# Rules of the 'posterior' stage (see docs/architecture.md).
