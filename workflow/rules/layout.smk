# Rules of the 'layout' stage (see docs/architecture.md).
