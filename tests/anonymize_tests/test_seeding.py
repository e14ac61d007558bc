import hashlib
import hmac

import pytest
import torch

from anonymize import make_generator, output_seed

KEY = bytes(range(32))


def test_seed_is_an_hmac_of_the_canonical_fields():
    # Recomputed independently from the documented encoding: a change here changes every past run.
    fields = [b"boomerang-seed-v2", b"0", b"a/b.jpg", b"0.700000", b"0"]
    message = b"".join(len(f).to_bytes(8, "big") + f for f in fields)
    expected = int.from_bytes(hmac.new(KEY, message, hashlib.sha256).digest()[:8], "big") >> 1
    assert output_seed(KEY, 0, "a/b.jpg", 0.7) == output_seed(KEY, 0, "a/b.jpg", 0.7, 0) == expected


def test_seed_is_a_non_negative_63_bit_int():
    seeds = [output_seed(KEY, s, f"img{i}", 0.5, k) for s in range(3) for i in range(20) for k in range(2)]
    assert all(0 <= s < 2**63 for s in seeds)
    assert len(set(seeds)) == len(seeds)


def test_every_part_of_the_key_matters():
    base = output_seed(KEY, 1, "id", 0.5, 0)
    assert output_seed(KEY[::-1], 1, "id", 0.5, 0) != base
    assert output_seed(KEY, 2, "id", 0.5, 0) != base
    assert output_seed(KEY, 1, "id2", 0.5, 0) != base
    assert output_seed(KEY, 1, "id", 0.6, 0) != base
    assert output_seed(KEY, 1, "id", 0.5, 1) != base
    assert output_seed(KEY, 1, "id", 0.5, 0, face_index=0) != base


def test_without_the_secret_there_is_no_seed():
    for secret in (b"", b"short", None, "a text key of enough length"):
        with pytest.raises(ValueError, match="secret"):
            output_seed(secret, 0, "id", 0.5)


def test_level_is_canonical():
    seed = output_seed(KEY, 1, "id", 0.7)
    assert seed == output_seed(KEY, 1, "id", 0.1 * 7) == output_seed(KEY, 1, "id", 0.7000000000000001)


def test_field_boundaries_cannot_collide():
    assert output_seed(KEY, 1, "a", 0.5, 12) != output_seed(KEY, 1, "a", 0.5, 1)
    assert output_seed(KEY, 12, "3", 0.5) != output_seed(KEY, 1, "23", 0.5)


def test_generator_is_seeded_on_cpu():
    a, b = make_generator(42, "cuda"), make_generator(42)
    assert a.device.type == "cpu"
    assert torch.equal(torch.randn(5, generator=a), torch.randn(5, generator=b))
