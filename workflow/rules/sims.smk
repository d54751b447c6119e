# Rules of the 'sims' stage (see docs/architecture.md).
