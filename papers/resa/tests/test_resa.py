import numpy as np
import pytest
import torch

from common.tinylm import TinyGPT, TinyGPTConfig
from papers.resa.resa import (
    DecodingMethod,
    accuracy_interval,
    bucket_means,
    decode_teacher_forced,
    dense_reference_kv,
    kl_divergence,
    paired_accuracy_difference,
    per_seed_means,
    recall_accuracy,
    recall_chance,
    recall_prompt_len,
    standard_methods,
    window_maxima,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TinyGPT(TinyGPTConfig(vocab_size=40, d_model=32, n_layers=3, n_heads=2, context=80)).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return m


def data(seed=0, b=2, p=16, g=33):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 40, (b, p), generator=gen), torch.randint(0, 40, (b, g), generator=gen)


def test_dense_method_has_zero_error_and_matches_forward(model):
    prompt, cont = data()
    out = decode_teacher_forced(model, prompt, cont, DecodingMethod("dense", "dense"))
    full = model(torch.cat([prompt, cont], 1))
    assert torch.allclose(out["logits"], full[:, prompt.shape[1] - 1:-1], atol=1e-9)
    assert out["write_error"].shape == (2, cont.shape[1] - 1)
    assert float(out["write_error"].max()) < 1e-12


def test_sparse_errors_and_rectification_schedule(model):
    prompt, cont = data(1)
    sparse = decode_teacher_forced(model, prompt, cont, DecodingMethod("sparse", block_size=4, sparse_ratio=0.25))
    resa = decode_teacher_forced(model, prompt, cont, DecodingMethod("r8", rectify_every=8, block_size=4, sparse_ratio=0.25))
    assert sparse["n_rectifications"] == 0 and resa["n_rectifications"] == 32 // 8
    assert float(sparse["write_error"].max()) > 1e-3
    # until the first rectification ReSA is plain sparse decoding, step for step
    assert torch.allclose(resa["logits"][:, :9], sparse["logits"][:, :9], atol=1e-12)
    assert torch.allclose(resa["write_error"][:, :8], sparse["write_error"][:, :8], atol=1e-12)
    # right after a rectification the cache is dense again: the next entry's error is one sparse step's
    f1 = decode_teacher_forced(model, prompt, cont, DecodingMethod("r1", rectify_every=1, block_size=4, sparse_ratio=0.25))
    assert torch.allclose(resa["write_error"][:, 8], f1["write_error"][:, 8], atol=1e-12)


def test_rectify_every_step_with_all_blocks_is_dense(model):
    prompt, cont = data(2)
    dense = decode_teacher_forced(model, prompt, cont, DecodingMethod("dense", "dense"))
    full = decode_teacher_forced(model, prompt, cont, DecodingMethod("all", rectify_every=4, sparse_ratio=1.0))
    assert torch.allclose(dense["logits"], full["logits"], atol=1e-9)


def test_kl_and_reference(model):
    a = torch.tensor([[0.0, 1.0, 2.0]])
    assert float(kl_divergence(a, a)) == 0.0
    p, q = torch.softmax(a, -1), torch.softmax(a.flip(-1), -1)
    assert np.isclose(float(kl_divergence(a, a.flip(-1))), float((p * (p / q).log()).sum()))
    prompt, cont = data(3)
    ref = dense_reference_kv(model, torch.cat([prompt, cont], 1))
    assert len(ref) == 3 and ref[0][0].shape == (2, 2, 16 + 33, 16)


def test_buckets_windows_and_helpers():
    x = np.arange(10.0)[None]
    assert bucket_means(x, 2).tolist() == [[2.0, 7.0]]
    assert bucket_means(x, 3).tolist() == [[1.0, 4.0, 7.0]]  # the last step is left out
    assert window_maxima(x, 4).tolist() == [[3.0, 7.0]]
    with pytest.raises(ValueError):
        window_maxima(x, 6)
    assert per_seed_means(np.array([1.0, 3.0, 5.0, 7.0]), np.array([2, 2, 0, 0])) == [2.0, 6.0]
    assert recall_chance() == pytest.approx(1 / 12)
    names = [m.name for m in standard_methods([8, 16])]
    assert names == ["dense", "sparse", "oracle", "resa_f8", "resa_f16"]
    with pytest.raises(ValueError):
        DecodingMethod("bad", rectify_every=0)


def test_recall_prompt_is_the_bindings():
    from common.tinylm import VOCAB, recall_episodes

    assert recall_prompt_len(2, "tg") == 11 and recall_prompt_len(2, "onehop") == 9
    for fmt in ("tg", "onehop"):
        tokens, positions, _ = recall_episodes(6, 40, random_state=3, fmt=fmt)
        n = recall_prompt_len(2, fmt)
        for row in tokens:
            words = VOCAB.decode(row[:n + 1].tolist())
            assert words[n - 1] == "." and words[n] != "box"  # the prompt ends with the second binding


def test_dense_recall_matches_a_plain_forward():
    """Dense decoding through the cache scores recall exactly as one forward pass over the episode does."""
    from common.tinylm import load_tinylm, recall_episodes

    teacher = load_tinylm("tinylm_recall_onehop")[0]
    acc = recall_accuracy(teacher, DecodingMethod("dense", "dense"), 12, 40, None, random_state=5, fmt="onehop")
    tokens, positions, answers = recall_episodes(12, 40, random_state=5, fmt="onehop")
    with torch.no_grad():
        logits = teacher(tokens[:, : int(positions.max())])
    plain = (logits[torch.arange(12), positions - 1].argmax(-1) == answers).numpy().astype(float)
    assert acc.tolist() == plain.tolist() and acc.mean() >= 0.75  # the teacher recalls at distance 40


def test_accuracy_interval_is_wilson():
    ci = accuracy_interval(np.ones(32))
    assert ci.estimate == 1.0 and ci.hi == pytest.approx(1.0) and 0.88 < ci.lo < 0.90  # 32/32: [0.893, 1]
    ci = accuracy_interval([1, 0, 1, 1])
    p, n, z = 0.75, 4, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (ci.lo, ci.hi) == pytest.approx((centre - half, centre + half))
    with pytest.raises(ValueError):
        accuracy_interval([0.5, 1.0])


def test_paired_accuracy_difference_agresti_min():
    a = np.array([1] * 30 + [1, 0])  # a alone right on one episode
    b = np.array([1] * 30 + [0, 0])
    ci, n10, n01 = paired_accuracy_difference(a, b)
    assert (n10, n01) == (1, 0) and ci.estimate == pytest.approx(1 / 32) and ci.n == 32
    m, p10, p01, z = 34, 1.5 / 34, 0.5 / 34, 1.959963984540054
    half = z * np.sqrt((p10 + p01 - (p10 - p01) ** 2) / m)
    assert (ci.lo, ci.hi) == pytest.approx((p10 - p01 - half, p10 - p01 + half))
    same, _, _ = paired_accuracy_difference(b, b)  # no disagreement: still an interval of width > 0
    assert same.estimate == 0 and same.lo < -0.05 and same.hi > 0.05 and same.lo == pytest.approx(-same.hi)
    flipped, _, _ = paired_accuracy_difference(b, a)
    assert (flipped.lo, flipped.hi) == pytest.approx((-ci.hi, -ci.lo))
    big = np.r_[np.ones(400), np.zeros(400)]
    wide, _, _ = paired_accuracy_difference(big, big[::-1])
    assert wide.lo >= -1 and wide.hi <= 1
    with pytest.raises(ValueError):
        paired_accuracy_difference(a, b[:10])
