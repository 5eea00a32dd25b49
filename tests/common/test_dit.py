import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.diffusion.model import timestep_embedding
from common.dit import (
    DiTConfig,
    TinyDiT,
    dit_macs,
    drop_labels,
    patchify,
    sincos_pos_embed_2d,
    unpatchify,
)
from common.flow_matching import MACCounter, TrainConfig, flow_matching_loss, sample, train

SMALL = DiTConfig(image_size=8, channels=1, patch=2, width=32, depth=2, heads=4, mlp_ratio=2.0)


def _randomise(model: TinyDiT, seed: int = 0, std: float = 0.1) -> TinyDiT:
    """Every parameter drawn N(0, std^2): breaks adaLN-Zero's zeros so that every path of the network is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


# --- patches, positions, time embedding -----------------------------------------------------------------


@pytest.mark.parametrize("size,channels,patch", [(8, 1, 2), (16, 1, 2), (4, 3, 2), (8, 2, 4), (6, 1, 3)])
def test_patchify_unpatchify_are_inverse(size, channels, patch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, channels * size * size, generator=g)
    tokens = patchify(x, size, channels, patch)
    assert tokens.shape == (5, (size // patch) ** 2, patch * patch * channels)
    assert torch.equal(unpatchify(tokens, size, channels, patch), x)
    assert torch.equal(patchify(unpatchify(tokens, size, channels, patch), size, channels, patch), tokens)


def test_patchify_layout_on_a_digit():
    # pixel value = its row-major index in the 8x8 image: token (i, j) holds rows 2i..2i+1, columns 2j..2j+1
    x = torch.arange(64, dtype=torch.float32)[None]
    tokens = patchify(x, 8, 1, 2)[0]
    assert tokens[0].tolist() == [0, 1, 8, 9]
    assert tokens[1].tolist() == [2, 3, 10, 11]
    assert tokens[4].tolist() == [16, 17, 24, 25]  # second row of patches
    # channels vary fastest inside a token (the official "p q c" order)
    x2 = torch.stack([torch.arange(16.0), 100 + torch.arange(16.0)])[None].reshape(1, 32)
    assert patchify(x2, 4, 2, 2)[0, 0].tolist() == [0, 100, 1, 101, 4, 104, 5, 105]


def test_patchify_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        patchify(torch.zeros(2, 63), 8, 1, 2)
    with pytest.raises(ValueError):
        patchify(torch.zeros(2, 64), 8, 1, 3)
    with pytest.raises(ValueError):
        unpatchify(torch.zeros(2, 15, 4), 8, 1, 2)


def test_sincos_pos_embed_matches_diffusers():
    """Peer: diffusers' ``get_2d_sincos_pos_embed`` (base_size = grid, interpolation_scale = 1: the plain MAE/DiT
    embedding) gives the same table, to float32 rounding."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    for dim, grid in [(32, 4), (64, 4), (96, 8), (128, 8)]:
        ref = get_2d_sincos_pos_embed(dim, grid, base_size=grid, interpolation_scale=1.0, output_type="pt")
        ours = sincos_pos_embed_2d(dim, grid)
        assert ours.shape == ref.shape == (grid * grid, dim)
        assert torch.allclose(ours, ref.float(), atol=1e-6, rtol=0)
    # the first half embeds the column, the second the row: token (0, 1) differs from (0, 0) in the first half only
    pe = sincos_pos_embed_2d(16, 4)
    assert torch.equal(pe[0, 8:], pe[1, 8:]) and not torch.equal(pe[0, :8], pe[1, :8])
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(30, 4)


def test_timestep_embedding_differs_from_diffusers_only_by_its_frequency_shift():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 0.001, 0.3, 0.999, 1.0])
    # diffusers' DiT (Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)) divides the exponent by
    # half - 1 instead of half: the same features with max_period 10000^(half / (half - 1))
    ref = get_timestep_embedding(1000 * t, 256, flip_sin_to_cos=True, downscale_freq_shift=1).double()
    assert torch.allclose(timestep_embedding(t, 256, 1000.0, max_period=10000 ** (128 / 127)), ref, atol=1e-4)
    assert not torch.allclose(timestep_embedding(t, 256, 1000.0), ref, atol=1e-2)


# --- the network -----------------------------------------------------------------------------------------


def test_config_validation():
    for bad in [dict(image_size=7), dict(width=30, heads=4), dict(width=6, heads=3), dict(width=24, heads=5),
                dict(n_classes=-1), dict(attention="flash"), dict(mlp_ratio=0.0), dict(depth=0)]:
        with pytest.raises(ValueError):
            DiTConfig(**bad)
    cfg = DiTConfig(image_size=16)
    assert (cfg.grid, cfg.tokens, cfg.patch_dim, cfg.dim, cfg.null_label) == (8, 64, 4, 256, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_shape_dtype_and_inputs(dtype):
    torch.manual_seed(0)
    model = _randomise(TinyDiT(SMALL)).to(dtype)
    x = torch.randn(3, 64, dtype=dtype)
    out = model(x, torch.rand(3, dtype=dtype), torch.tensor([0, 9, 10]))
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    # scalar t; y=None is the null label
    assert torch.equal(model(x, 0.5), model(x, torch.full((3,), 0.5, dtype=dtype), torch.full((3,), 10)))
    with pytest.raises(ValueError):
        model(torch.randn(3, 63, dtype=dtype), 0.5)
    with pytest.raises(ValueError):
        model(x, torch.rand(2, dtype=dtype))
    # an unconditional model ignores y
    uncond = _randomise(TinyDiT(DiTConfig(width=32, depth=1, heads=2, n_classes=0))).to(dtype)
    assert torch.equal(uncond(x, 0.3), uncond(x, 0.3, torch.tensor([1, 2, 3])))


def test_adaln_zero_init_output_is_zero_and_only_the_final_linear_gets_gradient():
    torch.manual_seed(0)
    model = TinyDiT(SMALL)
    x, t, y = torch.randn(8, 64), torch.rand(8), torch.randint(0, 11, (8,))
    out = model(x, t, y)
    assert torch.equal(out, torch.zeros_like(out))  # exactly zero (Sec. 3.2: adaLN-Zero + zero final layer)
    out.pow(2).sum().backward()  # zero loss gradient: use a non-trivial target instead
    model.zero_grad()
    (model(x, t, y) - torch.randn(8, 64)).pow(2).sum().backward()
    grads = {n: p.grad.abs().max().item() for n, p in model.named_parameters()}
    assert grads["final_layer.linear.weight"] > 0 and grads["final_layer.linear.bias"] > 0
    # every block is the identity at init and the final modulation is multiplied by a zero weight: no gradient
    assert all(g == 0 for n, g in grads.items() if not n.startswith("final_layer.linear"))


def test_class_conditioning_changes_the_output_after_training_steps():
    torch.manual_seed(0)
    model = TinyDiT(SMALL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
    x0, t0 = torch.randn(4, 64, generator=g), torch.full((4,), 0.5)
    with torch.no_grad():
        assert torch.equal(model(x0, t0, torch.zeros(4, dtype=torch.long)), model(x0, t0, torch.ones(4, dtype=torch.long)))
    for _ in range(3):  # step 1 moves only the final linear layer; from step 2 on the modulations move too
        loss = flow_matching_loss(model, x, torch.rand(32, generator=g), torch.randn(32, 64, generator=g), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        a, b = model(x0, t0, torch.zeros(4, dtype=torch.long)), model(x0, t0, torch.ones(4, dtype=torch.long))
    assert (a - b).abs().max() > 1e-4


def test_sdpa_and_matmul_attention_agree():
    torch.manual_seed(0)
    a = _randomise(TinyDiT(DiTConfig(width=32, depth=2, heads=4, attention="sdpa")))
    b = TinyDiT(DiTConfig(width=32, depth=2, heads=4, attention="matmul"))
    b.load_state_dict(a.state_dict())
    x, t, y = torch.randn(6, 64), torch.rand(6), torch.randint(0, 11, (6,))
    assert torch.allclose(a(x, t, y), b(x, t, y), atol=1e-5, rtol=1e-5)


def test_determinism_under_a_seed():
    def run(seed):
        torch.manual_seed(seed)
        model = TinyDiT(SMALL)
        g = torch.Generator().manual_seed(seed)
        data = torch.randn(64, 64, generator=g)
        res = train(model, lambda m, xb, yb, gen: (flow_matching_loss(m, xb, torch.rand(len(xb), generator=gen),
                                                                      torch.randn(xb.shape, generator=gen)), {}),
                    data, None, TrainConfig(n_iters=5, batch_size=16, seed=seed))
        return model.state_dict(), res.losses

    (s1, l1), (s2, l2), (_, l3) = run(0), run(0), run(1)
    assert l1 == l2 and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert l1 != l3


# --- cost ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [SMALL, DiTConfig(image_size=16, width=64, depth=3, heads=4),
                                 DiTConfig(image_size=8, channels=3, patch=4, width=48, depth=1, heads=3,
                                           mlp_ratio=1.5, n_classes=0, t_freq_dim=64)])
def test_dit_macs_equals_torch_flop_counter(cfg):
    """``dit_macs`` counts every matrix product; torch's FlopCounterMode counts mm/addmm/bmm as 2 FLOPs per MAC.

    With the written-out attention (``attention="matmul"``) the two agree exactly (tolerance 0). torch counts
    nothing that we do not (no norms, softmax, activations). :class:`MACCounter` (``nn.Linear`` hooks) misses exactly
    the attention scores and weighted sum. With SDPA on a CPU, torch 2.13 has no FLOP formula for the CPU kernel
    (``_scaled_dot_product_flash_attention_for_cpu``) and misses the same two terms."""
    B = 3
    x, t = torch.randn(B, cfg.dim), torch.rand(B)
    y = torch.randint(0, 11, (B,)) if cfg.n_classes else None
    terms = dit_macs(cfg, breakdown=True)
    assert terms["total"] == dit_macs(cfg) == sum(v for k, v in terms.items() if k != "total")
    attention_products = terms["attn_scores"] + terms["attn_values"]
    for mode in ("matmul", "sdpa"):
        torch.manual_seed(0)
        model = TinyDiT(DiTConfig(**{**cfg.__dict__, "attention": mode}))
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x, t, y)
        with torch.no_grad(), MACCounter(model) as mc:
            model(x, t, y)
        assert mc.macs == B * (terms["total"] - attention_products)
        if mode == "matmul":
            assert fc.get_total_flops() == 2 * B * terms["total"]
        else:
            assert fc.get_total_flops() in (2 * B * terms["total"], 2 * B * (terms["total"] - attention_products))


def test_dit_macs_by_hand():
    # 8x8 digits, 16 tokens of 4 pixels, width 32, depth 2, MLP 64, t_freq 256
    T, D, M, L, P = 16, 32, 64, 2, 4
    by_hand = (256 * D + D * D + T * P * D + L * (6 * D * D + 3 * T * D * D + 2 * T * T * D + T * D * D + 2 * T * D * M)
               + 2 * D * D + T * D * P)
    assert dit_macs(SMALL) == by_hand


# --- peer: diffusers' DiTTransformer2DModel ------------------------------------------------------------------


def _diffusers_dit(cfg: DiTConfig):
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(num_attention_heads=cfg.heads, attention_head_dim=cfg.width // cfg.heads,
                                 in_channels=cfg.channels, num_layers=cfg.depth, sample_size=cfg.image_size,
                                 patch_size=cfg.patch, num_embeds_ada_norm=cfg.n_classes, norm_eps=1e-6).eval()


def test_parameter_count_against_diffusers():
    """diffusers gives every block its own timestep + label embedder (``AdaLayerNormZero.emb``; the final layer uses
    block 0's), the official DiT and we share one: the counts agree at depth 1 and differ by (depth - 1) embedders."""
    for depth in (1, 3):
        cfg = DiTConfig(image_size=8, width=32, depth=depth, heads=4)
        ours = TinyDiT(cfg)
        theirs = _diffusers_dit(cfg)
        n_ours = sum(p.numel() for p in ours.parameters())
        n_theirs = sum(p.numel() for p in theirs.parameters())
        embedder = sum(p.numel() for p in ours.t_embedder.parameters()) + ours.y_embedder.weight.numel()
        assert n_theirs == n_ours + (depth - 1) * embedder


def test_forward_matches_diffusers_with_copied_weights():
    """Peer: our (randomised) weights copied into diffusers' DiT give the same output, so patch embedding, positions,
    attention, adaLN-Zero blocks, final layer and unpatchify agree. diffusers' time features use a shifted frequency
    (see above), so its ``time_proj`` is replaced by ours; its per-block embedders all get our one embedder."""
    from torch import nn

    cfg = DiTConfig(image_size=8, width=32, depth=2, heads=4)
    torch.manual_seed(0)
    ours = _randomise(TinyDiT(cfg))
    theirs = _diffusers_dit(cfg)
    D, p, C = cfg.width, cfg.patch, cfg.channels

    class OurTimeFeatures(nn.Module):
        def forward(self, timesteps):
            return timestep_embedding(timesteps, cfg.t_freq_dim, scale=1.0).float()

    with torch.no_grad():
        theirs.pos_embed.proj.weight.copy_(ours.x_embedder.weight.reshape(D, p, p, C).permute(0, 3, 1, 2))
        theirs.pos_embed.proj.bias.copy_(ours.x_embedder.bias)
        for blk, ref in zip(theirs.transformer_blocks, ours.blocks, strict=True):
            emb = blk.norm1.emb
            emb.time_proj = OurTimeFeatures()
            emb.timestep_embedder.linear_1.load_state_dict(ours.t_embedder[0].state_dict())
            emb.timestep_embedder.linear_2.load_state_dict(ours.t_embedder[2].state_dict())
            emb.class_embedder.embedding_table.weight.copy_(ours.y_embedder.weight)
            blk.norm1.linear.load_state_dict(ref.adaLN_modulation.state_dict())
            for i, name in enumerate(("to_q", "to_k", "to_v")):
                getattr(blk.attn1, name).weight.copy_(ref.attn.qkv.weight[i * D:(i + 1) * D])
                getattr(blk.attn1, name).bias.copy_(ref.attn.qkv.bias[i * D:(i + 1) * D])
            blk.attn1.to_out[0].load_state_dict(ref.attn.proj.state_dict())
            blk.ff.net[0].proj.load_state_dict(ref.fc1.state_dict())
            blk.ff.net[2].load_state_dict(ref.fc2.state_dict())
        theirs.proj_out_1.load_state_dict(ours.final_layer.adaLN_modulation.state_dict())
        theirs.proj_out_2.load_state_dict(ours.final_layer.linear.state_dict())
        x, t, y = torch.randn(5, 64), torch.rand(5), torch.tensor([0, 3, 9, 10, 10])
        ref_out = theirs(x.reshape(5, C, 8, 8), timestep=cfg.time_scale * t, class_labels=y).sample.reshape(5, -1)
        assert torch.allclose(ours(x, t, y), ref_out, atol=1e-5, rtol=1e-4)


# --- flow matching with common.flow_matching ------------------------------------------------------------


def test_flow_matching_fit_on_digits_lowers_the_loss_and_samples():
    from common.diffusion.data import NULL_LABEL, load_digits_split
    from common.harness.seeding import seeded_training

    data = load_digits_split()
    gen = seeded_training(0)
    model = TinyDiT(SMALL)

    def loss_fn(m, xb, yb, g):
        yb = drop_labels(yb, 0.1, g, NULL_LABEL)
        return flow_matching_loss(m, xb, torch.rand(len(xb), generator=g), torch.randn(xb.shape, generator=g), yb), {}

    res = train(model, loss_fn, data.x_train, data.y_train, TrainConfig(n_iters=200, batch_size=64, lr=2e-3),
                generator=gen)
    first, last = sum(res.losses[:20]) / 20, sum(res.losses[-20:]) / 20
    assert math.isfinite(last) and last < 0.75 * first, (first, last)
    noise = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    out = sample(model, noise, torch.arange(8), n_steps=4, method="midpoint")
    assert out.shape == (8, 64) and torch.isfinite(out).all()


def test_drop_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat(100)
    assert torch.equal(drop_labels(y, 0.0, g, 10), y)
    assert (drop_labels(y, 1.0, g, 10) == 10).all()
    frac = (drop_labels(y, 0.1, g, 10) == 10).float().mean().item()
    assert 0.07 < frac < 0.13
