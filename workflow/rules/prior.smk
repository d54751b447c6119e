# Rules of the 'prior' stage (see docs/architecture.md): training of the diffusion prior.


rule train_prior:
    """Train the joint 4-bin diffusion prior; resumes from results/prior/checkpoint.pt."""
    input:
        training_cutouts(),
    output:
        model=f"{RESULTS}/prior/model.pt",
        loss_csv=f"{RESULTS}/prior/loss.csv",
        loss_png=report(
            f"{RESULTS}/prior/loss.png",
            caption="../report/prior_loss.rst",
            category="Prior",
        ),
        samples_png=report(
            f"{RESULTS}/prior/samples.png",
            caption="../report/prior_samples.rst",
            category="Prior",
        ),
    log:
        f"{RESULTS}/logs/train_prior.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_prior.tsv"
    conda:
        ENV
    threads: config["prior"]["threads"]
    resources:
        runtime=config["prior"]["runtime"],
        mem_mb=config["prior"]["mem_mb"],
        gpu=config["prior"]["gpus"],
    params:
        config=prior_params(),
    script:
        "../../scripts/train_prior.py"


ALL_TARGETS.extend(
    [
        f"{RESULTS}/prior/model.pt",
        f"{RESULTS}/prior/loss.png",
        f"{RESULTS}/prior/samples.png",
    ]
)
