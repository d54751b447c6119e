# Rules of the 'baselines' stage (see docs/architecture.md).
