"""The likelihood scaling: one type from config, run name and header cards to scaling.fits."""

import numpy as np
import pytest

from kappadiff.products import ProductError, write_table
from kappadiff.scaling import LikelihoodScaling, grid_runs, read_scaling, write_scaling

N_BINS = 4


def test_one_value_stands_for_every_bin():
    scaling = LikelihoodScaling.from_sampling({"scaled": True, "t_bar": 950, "sigma_t": 20})
    t_bar, sigma_t = scaling.per_bin(N_BINS)
    np.testing.assert_array_equal(t_bar, [950.0] * N_BINS)
    np.testing.assert_array_equal(sigma_t, [20.0] * N_BINS)
    assert scaling.same_for(LikelihoodScaling((950.0,) * N_BINS, (20.0,) * N_BINS), N_BINS)
    assert not scaling.same_for(LikelihoodScaling((950.0, 900.0, 950.0, 950.0), (20.0,)), N_BINS)
    assert not scaling.same_for(LikelihoodScaling(), N_BINS)


def test_unscaled_config_ignores_its_values():
    scaling = LikelihoodScaling.from_sampling({"scaled": False, "t_bar": 500, "sigma_t": 20})
    assert not scaling.scaled
    assert scaling.cards(N_BINS) == {"SCALED": False}
    assert scaling.run_name == "unscaled"


@pytest.mark.parametrize("name", ["unscaled", "t950_s20", "t500_s2.5", "t1000_s40"])
def test_run_names_round_trip(name):
    assert LikelihoodScaling.from_run_name(name).run_name == name


def test_per_bin_values_round_trip_through_header_cards():
    scaling = LikelihoodScaling((900.0, 925.0, 950.0, 975.0), (10.0, 20.0, 30.0, 40.0))
    cards = scaling.cards(N_BINS)
    assert cards["TBAR3"] == 950.0 and cards["SIGT4"] == 40.0
    assert LikelihoodScaling.from_header(cards) == scaling
    # per-bin values have no grid-candidate name
    with pytest.raises(ValueError, match="no single"):
        _ = scaling.run_name


def test_refuses_bad_values():
    with pytest.raises(ValueError, match="sigma_t"):
        LikelihoodScaling((500.0,), (0.0,))
    with pytest.raises(ValueError, match="finite"):
        LikelihoodScaling((float("nan"),), (20.0,))
    with pytest.raises(ValueError, match="t_bar has 3 values, expected 1 or 4"):
        LikelihoodScaling((1.0, 2.0, 3.0), (20.0,)).per_bin(N_BINS)
    with pytest.raises(ValueError, match="neither"):
        LikelihoodScaling.from_run_name("tuned")


def test_scaling_file_round_trip(tmp_path):
    scaling = LikelihoodScaling((900.0, 925.0, 950.0, 975.0), (20.0,))
    path = tmp_path / "scaling.fits"
    write_scaling(path, scaling, N_BINS, np.full(N_BINS, 0.03), ["t900_s20"] * N_BINS, {})
    assert read_scaling(path) == LikelihoodScaling((900.0, 925.0, 950.0, 975.0), (20.0,) * 4)


def test_read_scaling_refuses_bad_values(tmp_path):
    path = tmp_path / "scaling.fits"
    write_table(path, {"bin": np.arange(1, 5), "t_bar": np.full(4, 500.0),
                       "sigma_t": np.array([20.0, 0.0, 20.0, 20.0])})  # fmt: skip
    with pytest.raises(ProductError, match="sigma_t > 0"):
        read_scaling(path)
    write_table(path, {"bin": np.arange(1, 5), "t_bar": np.full(4, 500.0)})
    with pytest.raises(ProductError, match="sigma_t"):
        read_scaling(path)


def test_grid_runs_name_each_candidate_and_refuse_what_a_name_would_round():
    assert grid_runs([900, 950.5], [20]) == ["t900_s20", "t950.5_s20"]
    with pytest.raises(ValueError, match="6 significant digits"):
        grid_runs([950.1234567], [20])
