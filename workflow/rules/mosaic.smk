# Rules of the 'mosaic' stage (see docs/architecture.md).
