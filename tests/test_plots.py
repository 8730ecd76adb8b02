"""Every figure of ``enff plot`` is written and non-empty, for 1-D, small and multi-field 2-D states, with
and without filter diagnostics; the Hovmoller shows the chosen window, error scales are centred on zero."""

from __future__ import annotations

import numpy as np
import pytest

from enff.casefile import load_case, parse_case
from enff.cycle import run_case
from enff.plots import _error_limits, _hovmoller, plot_run
from enff.runfile import open_run

PNG = b"\x89PNG\r\n\x1a\n"


def _written_and_nonempty(paths, names):
    assert sorted(p.name for p in paths) == sorted(names)
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 5000, path


@pytest.fixture(scope="module")
def l96_bpf(tmp_path_factory):
    from tests.conftest import SMALL_CASE

    out = tmp_path_factory.mktemp("l96") / "run.nc"
    text = SMALL_CASE.replace('name = "none"', 'name = "bpf"').replace("cycles = 12", "cycles = 20")
    run_case(parse_case(text, overrides=["observations.stride=2"]), out, progress=False)
    return out


def test_one_dimensional_state_with_particle_filter_diagnostics(l96_bpf, tmp_path):
    written = plot_run(l96_bpf, tmp_path, window=8)
    _written_and_nonempty(written, ["run_scores.png", "run_diagnostics.png", "run_hovmoller.png",
                                    "run_snapshots.png", "run_rank_histogram.png"])


def test_plot_command_takes_a_burn_in(l96_bpf, tmp_path):
    from enff.cli import main

    assert main(["plot", str(l96_bpf), "--outdir", str(tmp_path), "--burn-in", "5"]) == 0
    assert (tmp_path / "run_diagnostics.png").stat().st_size > 5000
    assert main(["plot", str(l96_bpf), "--outdir", str(tmp_path), "--burn-in", "-1"]) == 2


def test_plot_command_takes_a_hovmoller_window(l96_bpf, tmp_path, monkeypatch, capsys):
    import enff.plots
    from enff.cli import build_parser, main

    shown = []
    draw = enff.plots._hovmoller

    def recording(ds, dim, window, *args):
        shown.append(ds["time"].values[window])
        return draw(ds, dim, window, *args)

    monkeypatch.setattr(enff.plots, "_hovmoller", recording)
    t = open_run(l96_bpf)["time"].values  # 20 cycles
    assert main(["plot", str(l96_bpf), "--outdir", str(tmp_path), "--window", "8"]) == 0
    assert main(["plot", str(l96_bpf), "--outdir", str(tmp_path)]) == 0  # default: WINDOW > 20, the whole run
    np.testing.assert_array_equal(shown[0], t[-8:])
    np.testing.assert_array_equal(shown[1], t)
    assert (tmp_path / "run_hovmoller.png").stat().st_size > 5000
    assert main(["plot", str(l96_bpf), "--outdir", str(tmp_path), "--window", "0"]) == 2
    assert "window" in capsys.readouterr().err
    plot_help = build_parser()._subparsers._group_actions[0].choices["plot"].format_help()
    assert f"last {enff.plots.WINDOW}" in " ".join(plot_help.split())  # the help states the default


def test_hovmoller_window_and_error_scale_centred_on_zero(l96_bpf):
    ds = open_run(l96_bpf)
    t = ds["time"].values
    observed = (np.asarray(ds["obs_index"].values),)
    fig = _hovmoller(ds, "x", slice(len(t) - 8, None), 2, True, observed, "run")
    truth_ax, _, error_ax, _ = fig.axes[:4]
    low, high = truth_ax.get_ylim()
    step = t[1] - t[0]
    assert low == pytest.approx(t[-8] - step / 2) and high == pytest.approx(t[-1] + step / 2)  # the last 8 cycles
    vmin, vmax = error_ax.collections[0].get_clim()
    error = (ds["analysis_mean"] - ds["truth"]).values[-8:]
    assert vmin == -vmax == pytest.approx(-np.abs(error).max())
    assert _error_limits(np.array([-0.5, 2.0])) == (-2.0, 2.0)
    assert _error_limits(np.zeros(3)) == (-1.0, 1.0)


def test_small_state_is_drawn_as_time_series(tmp_path):
    out = tmp_path / "l63.nc"
    run_case(load_case("l63", overrides=["run.cycles=15", "run.spinup=100"]), out, progress=False)
    _written_and_nonempty(plot_run(out, tmp_path / "png"),
                          ["l63_scores.png", "l63_timeseries.png", "l63_rank_histogram.png"])


def test_multi_field_state_gets_snapshots_per_field_on_physical_axes(tmp_path):
    case = load_case("ns64_atan", filter_name="letkf",
                     overrides=["model.n=16", "model.forcing_wavenumber=2", "run.cycles=4", "filter.radius=0.3",
                                "observations.stride=3"])
    run_case(case, tmp_path / "ns.nc", progress=False)
    written = plot_run(tmp_path / "ns.nc", snapshots=2)
    _written_and_nonempty(written, ["ns_scores.png", "ns_snapshots_pressure.png", "ns_snapshots_u.png",
                                    "ns_snapshots_v.png", "ns_rank_histogram.png"])
    with pytest.raises(ValueError, match="window"):
        plot_run(tmp_path / "ns.nc", window=0)
