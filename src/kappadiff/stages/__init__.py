"""One function per pipeline step: read inputs, call the science, write products.

Snakemake scripts call exactly one of these; the science modules below them do no I/O.
"""
