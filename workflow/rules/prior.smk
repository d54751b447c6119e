# Rules of the 'prior' stage (see docs/architecture.md).
