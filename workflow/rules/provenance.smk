rule resolved_config:
    """The configuration after validation and defaults, kept beside the products."""
    output:
        f"{RESULTS}/config.resolved.yaml",
    log:
        f"{RESULTS}/logs/resolved_config.log",
    benchmark:
        f"{RESULTS}/benchmarks/resolved_config.tsv"
    conda:
        ENV
    threads: 1
    resources:
        runtime=5,
        mem_mb=500,
    params:
        config=config,
    script:
        "../../scripts/resolved_config.py"


ALL_TARGETS.append(f"{RESULTS}/config.resolved.yaml")
