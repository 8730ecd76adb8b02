"""Case files: every shipped case validates; each kind of bad input names the file and key."""

import pytest

from enff.casefile import CaseError, load_case, parse_case, shipped_cases
from enff.cli import main
from enff.observations import ATan


def test_shipped_cases_cover_the_published_settings():
    names = set(shipped_cases())
    for setting in ("l63", "l96_40", "l96_1e6_atan", "ks1024_atan", "ks512_atan", "ns64_atan", "ns256_atan"):
        assert setting in names
        if setting.endswith("_atan"):
            assert setting.replace("_atan", "_identity") in names


@pytest.mark.parametrize("name", sorted(shipped_cases()))
def test_every_shipped_case_validates_with_every_tuned_filter(name):
    case = load_case(name)
    assert case.run.cycles >= 1
    for other in case.tables.get("filters", {}):
        assert load_case(name, filter_name=other).filter.name == other


def _edit(text, old, new):
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[run]", "[runs]", r"unknown section \[runs\]"),
        ("dim = 40", "dim = 40\ndimension = 3", "unknown key model.dimension"),
        ("dim = 40", 'dim = "forty"', "model.dim must be int"),
        ("dim = 40", "dim = 0", "dim"),
        ("dt = 0.05", "dt = -0.05", "dt"),
        ('name = "lorenz96"', 'name = "lorenz99"', "model.name must be one of"),
        ("every = 1", "every = 0", "observations.every"),
        ("std = 1.0", "std = -1.0", "observations.std"),
        ('operator = "identity"', 'operator = "cube"', "operator"),
        ("size = 10", "size = 1", "ensemble.size"),
        ('initial_mean = "truth"', 'initial_mean = "climatology"', "ensemble.initial_mean"),
        ('name = "none"', 'name = "kalman"', "filter.name must be one of"),
        ('name = "none"', 'name = "none"\nradius = 3.0', "unknown key filter.radius"),
        ("cycles = 12", "cycles = 0", "run.cycles"),
        ("cycles = 12", "cycles = 1.5", "run.cycles must be int"),
        ("seed = 7", 'seed = 7\ndtype = "float16"', "run.dtype"),
        ("seed = 7", 'seed = 7\ndevice = "tpu"', "run.device"),
    ],
)
def test_bad_input_names_file_and_key(small_case_text, old, new, message):
    with pytest.raises(CaseError, match=message) as info:
        parse_case(_edit(small_case_text, old, new), "bad.toml")
    assert str(info.value).startswith("bad.toml:")


def test_missing_section_and_invalid_toml(small_case_text):
    with pytest.raises(CaseError, match=r"missing section \[filter\]"):
        parse_case(small_case_text.replace('[filter]\nname = "none"\n', ""), "x.toml")
    with pytest.raises(CaseError, match="not valid TOML"):
        parse_case("[model\nname = 1", "x.toml")


def test_overrides_parse_toml_values_and_are_validated(small_case_text):
    case = parse_case(small_case_text, overrides=["run.cycles=3", "observations.operator=atan", "model.forcing=10"])
    assert case.run.cycles == 3 and case.observations.operator == ATan() and case.model.params.forcing == 10
    with pytest.raises(CaseError, match="run.cycles"):
        parse_case(small_case_text, overrides=["run.cycles=-1"])
    with pytest.raises(CaseError, match="section.key=value"):
        parse_case(small_case_text, overrides=["cycles"])


def test_cli_rejects_bad_case_with_status_2_and_no_output(tmp_path, small_case_text, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(small_case_text.replace("size = 10", "size = -3"))
    out = tmp_path / "out.nc"
    assert main(["run", str(bad), "--out", str(out), "--quiet"]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "bad.toml" in err and "ensemble.size" in err
