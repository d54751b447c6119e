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


rule denoiser_covariance:
    """The prior's denoiser error spectrum at 40 noise levels: the split-Gibbs prior step's noise."""
    input:
        model=f"{RESULTS}/prior/model.pt",
        cutouts=training_cutouts(),
    output:
        f"{RESULTS}/prior/denoiser_covariance.fits",
    log:
        f"{RESULTS}/logs/denoiser_covariance.log",
    benchmark:
        f"{RESULTS}/benchmarks/denoiser_covariance.tsv"
    conda:
        ENV
    threads: 2
    resources:
        runtime=config["sampling"]["runtime_min"],
        mem_mb=config["sampling"]["mem_mb"],
        gpu=1,
    params:
        config={
            "seed": config["seed"],
            "sampling": {"split_gibbs": config["sampling"]["split_gibbs"]},
        },
    script:
        "../../scripts/denoiser_covariance.py"


ALL_TARGETS.extend(
    [
        f"{RESULTS}/prior/model.pt",
        f"{RESULTS}/prior/loss.png",
        f"{RESULTS}/prior/samples.png",
    ]
)
