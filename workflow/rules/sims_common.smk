# Helpers of the 'sims' stage rules (sims.smk): inputs and resources of a sky.
import os


def tomography_inputs(wildcards):
    """Files a sky is made from: its N-body shells and a user n(z) file, if any."""
    inputs = []
    sims = config["sims"]
    if sims["source"] == "gowerstreet":
        inputs.append(
            os.path.join(sims["shell_files"][int(wildcards.sim)], "control.par")
        )
    elif sims["source"] == "cosmogrid":
        inputs.append(sims["shell_files"][int(wildcards.sim)])
    if sims["nz"] != "builtin":
        inputs.append(sims["nz"])
    return inputs


def sim_index(wildcards):
    """Sky number of the {sim} wildcard."""
    return int(wildcards.sim)


def tomography_mem_mb(wildcards):
    """Peak memory of one sky: 1.5 GB plus 150 bytes a pixel (measured ~100-200 B/pixel:
    4 float64 maps, a shell, GLASS buffers; docs/benchmarks.md)."""
    return 1500 + 150 * 12 * config["sims"]["nside"] ** 2 // 10**6


def tomography_runtime(wildcards):
    """Minutes for one sky: ~1.5 min at nside 1024 on 2 cores, ~nside^3 beyond."""
    return max(10, 3 * (config["sims"]["nside"] // 1024) ** 3)
