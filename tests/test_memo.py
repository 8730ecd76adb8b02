"""Values kept beside frozen objects (enff.memo) and the caches built on them: nothing is written into the
objects, equal content found again hits the cache, and a value goes when its object goes."""

import dataclasses
import gc

import numpy as np
import torch

from enff.filters import localization
from enff.filters.localization import local_observation_tensors, local_observations
from enff.memo import IdentityMemo
from enff.observations.operators import Indices, Subsample

from helpers import ring_space


class _Owner:
    pass


def test_identity_memo_computes_once_per_object_and_key_and_forgets_dead_objects():
    memo: IdentityMemo[int] = IdentityMemo()
    calls = []
    a, b = _Owner(), _Owner()

    def compute(value: int) -> int:
        calls.append(value)
        return value

    assert memo.get(a, "k", lambda: compute(1)) == 1
    assert memo.get(a, "k", lambda: compute(2)) == 1  # cached: compute not called again
    assert memo.get(a, "other", lambda: compute(3)) == 3
    assert memo.get(b, "k", lambda: compute(4)) == 4  # another object, its own value
    assert calls == [1, 3, 4] and len(memo) == 2
    del a
    gc.collect()
    assert len(memo) == 1


def test_selection_index_is_reused_without_writing_into_the_frozen_operator():
    selection = Subsample(every=3)
    x = torch.arange(12.0).reshape(1, 12)
    first = selection._index_on((12,), x.device)
    assert selection._index_on((12,), x.device) is first
    torch.testing.assert_close(selection(x), x[:, ::3])
    assert vars(selection) == {"every": 3, "offset": 0}  # only its fields


def test_local_observations_are_found_again_for_equal_geometry_and_keep_no_tensors(monkeypatch):
    obs = ring_space(16, Indices(tuple(range(0, 16, 2))), 0.5)
    local = local_observations(obs, 2.0)
    assert {f.name for f in dataclasses.fields(local)} == {"active", "index", "weight"}
    # a new operator and grid with the same content (a mask that repeats): the same cached structure
    again = ring_space(16, Indices(tuple(range(0, 16, 2))), 0.5)
    assert local_observations(again, 2.0) is local
    tensors = local_observation_tensors(obs, 2.0, "cpu", torch.float32)
    assert local_observation_tensors(again, 2.0, "cpu", torch.float32) is tensors
    assert tensors[2].dtype == torch.float32 and tensors[0].dtype == torch.int64
    np.testing.assert_array_equal(tensors[1].numpy(), local.index)
    # a cycle that reuses the grid and operator objects hashes nothing
    monkeypatch.setattr(localization.hashlib, "blake2b", None)
    assert local_observations(obs, 2.0) is local
