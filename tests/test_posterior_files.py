"""Posterior files hold tensors and plain data only: reading one never runs code; old pickled files
are refused unless the caller opts in; a hostile file is refused through the API and the CLI."""

import pickle

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, Uniform

from enff.amortized import FMPE, NetworkConfig, Posterior, TrainingConfig, load_posterior
from enff.amortized.storage import FORMAT, LEGACY_FORMAT, TRUST_LEGACY_ENV, PosteriorFileError, prior_from_data, to_plain
from enff.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = NetworkConfig(hidden_features=(8, 8), time_features=2)


class _Payload:
    """A pickle whose loading would create ``marker``: the code a hostile posterior file carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def posterior():
    """A barely trained FMPE posterior over d = 2 (the file format, not its accuracy, is under test)."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn((64, 2), generator=gen)
    x = theta + 0.3 * torch.randn((64, 2), generator=gen)
    prior = Independent(Uniform(-5 * torch.ones(2), 5 * torch.ones(2)), 1)
    training = TrainingConfig(batch_size=32, max_epochs=2, progress=False)
    return FMPE(prior, network=TINY, training=training).fit(theta, x)


def _legacy_save(post: Posterior, path) -> None:
    """Write ``post`` the way the first format did: a pickle of the payload's Python objects."""
    torch.save({"format": LEGACY_FORMAT, "class": type(post).__name__, "payload": post._payload()}, path)


def _hostile(kind: str, path, marker) -> None:
    blob = {"format": FORMAT, "class": "FMPEPosterior", "payload": _Payload(marker)}
    if kind == "torch":
        torch.save(blob, path)
    else:
        path.write_bytes(pickle.dumps(blob, protocol=2))


def test_saved_file_loads_without_pickled_objects(posterior, tmp_path):
    path = tmp_path / "p.pt"
    posterior.save(path)
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == FORMAT and blob["class"] == "FMPEPosterior"
    loaded = load_posterior(path)
    x = torch.tensor([[0.3, -0.2]])
    assert torch.equal(posterior.sample(7, x, generator=torch.Generator().manual_seed(1)),
                       loaded.sample(7, x, generator=torch.Generator().manual_seed(1)))
    assert loaded.network == posterior.network and loaded.solver == posterior.solver
    assert loaded.history == posterior.history
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("prior", [
    Independent(Normal(torch.zeros(3), 2 * torch.ones(3)), 1),
    Independent(Uniform(-torch.ones(3), torch.ones(3)), 1),
    MultivariateNormal(torch.zeros(3), torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])),
])
def test_priors_round_trip_as_plain_data(prior):
    rebuilt = prior_from_data(to_plain(prior))
    draws = prior.sample((5,))
    assert type(rebuilt) is type(prior)
    assert torch.allclose(rebuilt.log_prob(draws), prior.log_prob(draws))


def test_a_prior_that_cannot_be_stored_is_refused_on_save(posterior, tmp_path):
    posterior.save(tmp_path / "copy.pt")
    post = load_posterior(tmp_path / "copy.pt")
    post.prior = torch.distributions.Beta(torch.ones(2), torch.ones(2))
    with pytest.raises(TypeError, match="Beta"):
        post.save(tmp_path / "beta.pt")
    assert not (tmp_path / "beta.pt").exists()


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_hostile_file_does_not_run(kind, tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_LEGACY_ENV, raising=False)
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    _hostile(kind, path, marker)
    with pytest.raises(PosteriorFileError, match=f"{path}: (refused|not a readable posterior file)"):
        load_posterior(path)
    with pytest.raises(PosteriorFileError, match=f"{path}: (refused|not a readable posterior file)"):
        load_posterior(path, trust_legacy=False)
    assert not marker.exists()


def test_legacy_file_is_refused_unless_trusted(posterior, tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_LEGACY_ENV, raising=False)
    path = tmp_path / "old.pt"
    _legacy_save(posterior, path)
    with pytest.raises(PosteriorFileError, match=f"{path}: refused.*{TRUST_LEGACY_ENV}=1"):
        load_posterior(path)
    x = torch.tensor([[0.1, 0.4]])
    expected = posterior.sample(5, x, generator=torch.Generator().manual_seed(2))
    old = load_posterior(path, trust_legacy=True)
    assert torch.equal(old.sample(5, x, generator=torch.Generator().manual_seed(2)), expected)
    monkeypatch.setenv(TRUST_LEGACY_ENV, "1")
    assert torch.equal(Posterior.load(path).sample(5, x, generator=torch.Generator().manual_seed(2)), expected)
    with pytest.raises(PosteriorFileError, match="refused"):
        load_posterior(path, trust_legacy=False)
    old.save(path)  # converted: readable without trust
    monkeypatch.delenv(TRUST_LEGACY_ENV)
    assert torch.equal(load_posterior(path).sample(5, x, generator=torch.Generator().manual_seed(2)), expected)


@pytest.mark.parametrize("content, match", [
    (b"", "not a readable posterior file"),
    (b"just some text\n", "not a readable posterior file"),
    (b"\x00\x01\x02\xff" * 50, "not a readable posterior file|refused"),
])
def test_unreadable_files_are_named(content, match, tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(PosteriorFileError, match=f"{path}.*({match})"):
        load_posterior(path)


def test_truncated_and_inconsistent_files_are_named(posterior, tmp_path):
    path = tmp_path / "p.pt"
    posterior.save(path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(PosteriorFileError, match=f"{tmp_path / 'cut.pt'}: not a readable posterior file"):
        load_posterior(tmp_path / "cut.pt")
    blob = torch.load(path, weights_only=True)
    blob["payload"]["network"]["hidden_features"] = (3,)
    torch.save(blob, tmp_path / "odd.pt")
    with pytest.raises(PosteriorFileError, match=f"{tmp_path / 'odd.pt'}: inconsistent FMPEPosterior"):
        load_posterior(tmp_path / "odd.pt")
    with pytest.raises(PosteriorFileError, match="no such posterior file"):
        load_posterior(tmp_path / "missing.pt")


def test_cli_refuses_a_hostile_posterior_before_writing(small_case_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TRUST_LEGACY_ENV, raising=False)
    path, marker, out = tmp_path / "evil.pt", tmp_path / "pwned", tmp_path / "run.nc"
    _hostile("torch", path, marker)
    status = main(["run", str(small_case_file), "--filter", "learned", "--set", f"filter.posterior='{path}'",
                   "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and not marker.exists() and not out.exists()
    assert f"{path}: refused" in err and "Traceback" not in err
